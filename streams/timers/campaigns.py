"""Once a local day, each partition this worker serves runs the date-triggered campaigns.

A worker that starts (or takes a partition over) runs today's at once: a date run twice
grants nothing twice, and a day slept through by every worker is not skipped.
"""

from __future__ import annotations

import logging
import time

from models.processor import Outcome
from streams.app import Pipeline
from streams.intake import Intake

logger = logging.getLogger(__name__)


def register(p: Pipeline, intake: Intake) -> None:
    ran: dict[int, str] = {}  # partition -> the local date last run here

    @p.app.timer(interval=10.0)
    async def daily_campaigns() -> None:
        today = p.clock.now().astimezone(p.config.timezone).date()
        due = [partition for partition in intake.ready_partitions() if ran.get(partition) != today.isoformat()]
        if not due:
            return

        def run(partition: int, out: Outcome) -> None:
            started, before = time.perf_counter(), len(out.outputs)
            intake.processor.run_campaigns(partition, today, out)
            out.count(("commands", "run_campaigns", "applied"))
            ran[partition] = today.isoformat()
            logger.info(
                "campaigns of %s on partition %d: %d events in %.2fs",
                today,
                partition,
                len(out.outputs) - before,
                time.perf_counter() - started,
            )

        await intake.work(due, run)
