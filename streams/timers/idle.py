"""The wall clock closes the periods of a partition that has received nothing for
`idle_close_after`, once per that interval; an input's own time does otherwise.

The clock's time reaches the partition as an input of `loyalty-inputs`, in order with the
others; it is also how a worker with nothing to do shows it still takes its inputs (the
`loyalty_processing_seconds` count grows), which an idle tick taken in process would not.
"""

from __future__ import annotations

import time

from streams.app import Pipeline
from streams.intake import Intake


def register(p: Pipeline, intake: Intake) -> None:
    idle_after = p.config.idle_close_after.total_seconds()
    started = time.monotonic()
    ticked: dict[int, float] = {}

    @p.app.timer(interval=1.0)
    async def idle_close() -> None:
        now = time.monotonic()
        at = p.clock.now()
        for partition in intake.ready_partitions():
            quiet_since = max(intake.last_input.get(partition, started), ticked.get(partition, 0.0))
            if now - quiet_since >= idle_after:
                ticked[partition] = now
                intake.send_tick(partition, at)
