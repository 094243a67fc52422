"""The birthday campaign through a real worker whose clock is set just before a local midnight."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from streams.local.probe import OutputReader
from tests.conftest import PipelineUnderTest
from tests.integration.test_lifecycle import customer_event, send_events
from tests.integration.test_pipeline import records

pytestmark = pytest.mark.integration


def grants(outputs: OutputReader, pipeline: PipelineUnderTest) -> list[tuple[str, str]]:
    return sorted(
        (o["customer_id"], o["caused_by"])
        for o in records(outputs, pipeline, "offer-triggers")
        if o["offer_id"] == "birthday_bonus"
    )


def registered(event_id: str, customer: str, birth: str, at: str = "2025-01-10T10:00:00+01:00") -> dict[str, Any]:
    return customer_event(event_id, "registered", customer, at, birth_date=birth)


async def test_a_day_passes_and_exactly_the_right_customers_get_their_birthday_bonus(
    pipeline: PipelineUnderTest, outputs: OutputReader
) -> None:
    # Berlin time: 40 seconds before 25 November begins.
    pipeline.start_worker(LOYALTY_CLOCK_START="2026-11-24T23:59:20+01:00")
    await outputs.start()
    await send_events(
        pipeline,
        [
            registered("E-1", "C-B1", "1990-11-25"),  # birthday tomorrow, a member for almost two years
            registered("E-2", "C-B2", "1985-11-23"),  # birthday was yesterday
            registered("E-3", "C-B3", "1990-11-25", at="2026-06-01T10:00:00+02:00"),  # a member for half a year
            registered("E-4", "C-B4", "2000-02-29"),
            customer_event("E-5", "registered", "C-B5", "2025-01-10T10:00:00+01:00"),  # no birth date
        ],
    )

    def profiles() -> int:
        return len({s["customer_id"] for s in records(outputs, pipeline, "customer-status")})

    await outputs.wait_for(lambda: profiles() == 5, what="five registrations")
    await outputs.wait_for(lambda: len(grants(outputs, pipeline)) >= 1, timeout=90, what="midnight's campaign run")
    await asyncio.sleep(3)
    assert grants(outputs, pipeline) == [("C-B1", "campaign:birthday_bonus:2026-11-25")]
    (bonus,) = [o for o in records(outputs, pipeline, "offer-triggers") if o["offer_id"] == "birthday_bonus"]
    assert (bonus["points"], bonus["occurred_at"], bonus["expires_at"]) == (
        500,
        "2026-11-25T00:00:00+01:00",
        "2026-12-25T00:00:00+01:00",
    )

    env = pipeline.env()

    def run(day: str) -> str:
        command = [sys.executable, "-m", "streams.cli", "run-campaigns", "--date", day]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=True)
        return done.stdout

    assert "2026-11-25" in await asyncio.to_thread(run, "2026-11-25")  # the same date again: nothing new
    assert "2026-11-23" in await asyncio.to_thread(run, "2026-11-23")  # a date run on demand
    await outputs.wait_for(lambda: len(grants(outputs, pipeline)) >= 2, what="the on-demand run")
    await asyncio.sleep(3)
    assert grants(outputs, pipeline) == [
        ("C-B1", "campaign:birthday_bonus:2026-11-25"),
        ("C-B2", "campaign:birthday_bonus:2026-11-23"),
    ]
