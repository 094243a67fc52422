"""A close walk also goes on while no input comes: a slice every `loyalty_walk_nudge_every`."""

from __future__ import annotations

from models.processor import Outcome
from streams.app import Pipeline
from streams.intake import Intake


def register(p: Pipeline, intake: Intake) -> None:
    @p.app.timer(interval=p.settings.loyalty_walk_nudge_every)
    async def close_walks() -> None:
        walking = list(intake.processor.walks)
        if walking:

            def nothing(partition: int, out: Outcome) -> None:
                pass  # `Intake.work` walks a slice after the work it is given

            await intake.work(walking, nothing)
