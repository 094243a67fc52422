"""Consumer lag of the input partitions this worker holds: records not yet taken."""

from __future__ import annotations

import contextlib

from faust.types import TP

from streams.app import Pipeline
from streams.intake import Intake


def register(p: Pipeline, intake: Intake) -> None:
    measured: set[TP] = set()

    @p.app.timer(interval=5.0)
    async def consumer_lag() -> None:
        consumer = p.app.consumer
        assigned = {tp for tp in consumer.assignment() if tp.topic in intake.topics}
        for tp in measured - assigned:  # revoked: another worker reports it now
            with contextlib.suppress(KeyError):
                p.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        measured.intersection_update(assigned)
        for tp in assigned:
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            position = intake.next_offset.get(tp, highwater)  # nothing taken yet: nothing known to wait
            p.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(highwater - position, 0))
            measured.add(tp)
