"""The wall clock closes the periods of a partition that has received nothing for
`idle_close_after`, once per that interval; an input's own time does otherwise."""

from __future__ import annotations

import time

from models.processor import Outcome
from streams.app import Pipeline
from streams.intake import Intake


def register(p: Pipeline, intake: Intake) -> None:
    idle_after = p.config.idle_close_after.total_seconds()
    started = time.monotonic()
    ticked: dict[int, float] = {}

    @p.app.timer(interval=1.0)
    async def idle_close() -> None:
        now = time.monotonic()
        due = [
            partition
            for partition in intake.ready_partitions()
            if now - max(intake.last_input.get(partition, started), ticked.get(partition, 0.0)) >= idle_after
        ]
        if not due:
            return
        at = p.clock.now()
        for partition in due:
            ticked[partition] = now

        def tick(partition: int, out: Outcome) -> None:
            intake.processor.tick(partition, at, out)

        await intake.work(due, tick)
