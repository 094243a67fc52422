"""A commit at least every `loyalty_commit_interval`, also when no input comes (a timer's
closes and grants are state too)."""

from __future__ import annotations

from streams.app import Pipeline
from streams.intake import Intake


def register(p: Pipeline, intake: Intake) -> None:
    @p.app.timer(interval=p.settings.loyalty_commit_interval)
    async def commit() -> None:
        intake.commit_soon()
