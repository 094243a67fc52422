"""The worker's timers, one to a module; each works through the live path's lock, in turn
with the batches (`Intake.work`)."""

from __future__ import annotations

from streams.app import Pipeline
from streams.intake import Intake
from streams.timers import campaigns, commits, idle, lag, walks


def register(p: Pipeline, intake: Intake) -> None:
    for timer in (idle, walks, campaigns, commits, lag):
        timer.register(p, intake)
