"""A month passes: every customer's period closes, including those who bought nothing.

Through a real worker: by the partition's watermark (another customer's receipt
past the month's end plus the grace), and by the wall clock for an idle partition.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from config.loading import DEFAULT_CONFIG, parse_config
from models.schema import LoyaltyConfig
from streams.envelope import partition_for
from streams.local.probe import OutputReader
from tests.conftest import PipelineUnderTest
from tests.integration.test_pipeline import answered, receipt, records, send
from tests.reference import DEFAULT_PARTITIONS, assert_same, observed, snapshots_settled
from tests.reference import reference as core_reference

pytestmark = pytest.mark.integration


def same_partition(count: int, partition: int = 0) -> list[str]:
    """Customer ids that all land on one partition, so one watermark decides for them."""
    ids = (f"C-M{n}" for n in range(10_000))
    return [c for c in ids if partition_for(c, DEFAULT_PARTITIONS) == partition][:count]


def closes(outputs: OutputReader, pipeline: PipelineUnderTest, period: str) -> dict[str, dict[str, Any]]:
    return {
        c["customer_id"]: c
        for c in records(outputs, pipeline, "status-changes")
        if c["reason"] == "period_close" and c["period"] == period and c["status_system"] == "monthly_amount"
    }


async def test_a_month_passes_and_everyone_is_closed_by_the_watermark(
    pipeline: PipelineUnderTest, outputs: OutputReader, config: LoyaltyConfig
) -> None:
    gold, silver, bronze, buyer, newcomer = same_partition(5)
    october = [
        *(receipt(f"G-{n}", gold, f"2026-10-0{n}T12:00:00+02:00", "60.00") for n in range(1, 5)),  # 240.00
        *(receipt(f"S-{n}", silver, f"2026-10-1{n}T12:00:00+02:00", "75.00") for n in range(1, 3)),  # 150.00
        receipt("B-1", bronze, "2026-10-20T12:00:00+02:00", "10.00"),
        receipt("Y-1", buyer, "2026-10-21T12:00:00+02:00", "10.00"),
    ]
    # November: only `buyer` buys, past October's end plus the grace, which closes
    # October for everyone on the partition; nobody else buys all month.
    november = [
        receipt("Y-2", buyer, "2026-11-02T09:00:00+01:00", "10.00"),
        receipt("Y-3", buyer, "2026-11-20T09:00:00+01:00", "10.00"),
    ]
    # A newcomer's receipt on 1 December, 01:30: past November's end plus the grace.
    december = [receipt("N-1", newcomer, "2026-12-01T01:30:00+01:00", "5.00")]
    now = "2026-12-02T12:00:00+00:00"
    pipeline.start_worker(LOYALTY_CLOCK_START=now)
    await outputs.start()
    everything = october + november + december
    for batch in (october, november, december):
        await send(pipeline, batch)
    await answered(outputs, [r["receipt_id"] for r in everything])
    await outputs.wait_for(lambda: len(closes(outputs, pipeline, "2026-11")) >= 2, what="November's closes")
    await asyncio.sleep(2.0)

    # October earned Gold and Silver; November, without a purchase, takes them back.
    assert {
        c: (e["previous"], e["current"], e["caused_by"]) for c, e in closes(outputs, pipeline, "2026-10").items()
    } == {
        gold: ("bronze", "gold", "Y-2"),
        silver: ("bronze", "silver", "Y-2"),
    }
    assert {
        c: (e["previous"], e["current"], e["caused_by"]) for c, e in closes(outputs, pipeline, "2026-11").items()
    } == {
        gold: ("gold", "bronze", "N-1"),
        silver: ("silver", "bronze", "N-1"),
    }
    latest = {s["customer_id"]: s for s in records(outputs, pipeline, "customer-status")}
    assert {c: latest[c]["statuses"][0]["period"] for c in (gold, silver, bronze, buyer)} == dict.fromkeys(
        (gold, silver, bronze, buyer), "2026-12"
    )

    # A till that was offline sends `bronze`'s November receipt after the frontier closed
    # November: it is late, counted there, and corrects December's level.
    late = receipt("B-LATE", bronze, "2026-11-30T20:00:00+01:00", "120.00")
    await send(pipeline, [late])
    await answered(outputs, ["B-LATE"])
    await outputs.wait_for(
        lambda: any(c["reason"] == "late_receipt" for c in records(outputs, pipeline, "status-changes")),
        what="the late receipt's correction",
    )
    await asyncio.sleep(2.0)
    (correction,) = [c for c in records(outputs, pipeline, "status-changes") if c["reason"] == "late_receipt"]
    assert (correction["customer_id"], correction["previous"], correction["current"], correction["period"]) == (
        bronze,
        "bronze",
        "silver",
        "2026-11",
    )
    # Exactly what the pure core says for this partition's receipts, in their order.
    expected = core_reference(config, [*everything, late], datetime.fromisoformat(now)).events
    await snapshots_settled(outputs, pipeline.prefix, expected)
    assert_same(observed(outputs, pipeline.prefix), expected)


async def test_an_idle_partition_is_closed_by_the_wall_clock(
    pipeline: PipelineUnderTest, outputs: OutputReader, tmp_path: Path
) -> None:
    text = DEFAULT_CONFIG.read_text(encoding="utf-8").replace("idle_close_after: 5m", "idle_close_after: 2s")
    assert "idle_close_after: 2s" in text
    parse_config(text)
    config_path = tmp_path / "loyalty.yaml"
    config_path.write_text(text, encoding="utf-8")
    gold, silver = same_partition(2, partition=1)
    november = [
        *(receipt(f"G-{n}", gold, f"2026-11-0{n}T12:00:00+01:00", "60.00") for n in range(1, 5)),
        *(receipt(f"S-{n}", silver, f"2026-11-1{n}T12:00:00+01:00", "75.00") for n in range(1, 3)),
    ]
    # Berlin: 20 seconds before November ends plus the one-hour grace; nothing else arrives.
    pipeline.start_worker(LOYALTY_CLOCK_START="2026-12-01T00:59:40+01:00", LOYALTY_CONFIG=str(config_path))
    await outputs.start()
    await send(pipeline, november)
    await answered(outputs, [r["receipt_id"] for r in november])
    assert closes(outputs, pipeline, "2026-11") == {}
    await outputs.wait_for(lambda: len(closes(outputs, pipeline, "2026-11")) >= 2, timeout=90, what="the idle close")
    found = closes(outputs, pipeline, "2026-11")
    assert {c: (e["previous"], e["current"]) for c, e in found.items()} == {
        gold: ("bronze", "gold"),
        silver: ("bronze", "silver"),
    }
    # The cause names the wall-clock instant, which is past the month's end plus the grace.
    instants = {datetime.fromisoformat(e["caused_by"].removeprefix("clock:")) for e in found.values()}
    assert len(instants) == 1
    assert instants.pop() >= datetime.fromisoformat("2026-12-01T01:00:00+01:00")


async def test_a_walk_still_going_when_the_frontier_moves_again_is_finished_first(
    pipeline: PipelineUnderTest, outputs: OutputReader, tmp_path: Path
) -> None:
    # Walks paced so slowly that they never move on their own, and no at-risk notices, so the
    # daily run looks at nobody without a birth date: only the second move can finish the walk.
    text = DEFAULT_CONFIG.read_text(encoding="utf-8").replace("    at_risk_days: 7\n", "")
    assert all(system.at_risk_days is None for system in parse_config(text).status_systems)
    config_path = tmp_path / "loyalty.yaml"
    config_path.write_text(text, encoding="utf-8")
    stopped = {"LOYALTY_WALK_EVERY": "1e9", "LOYALTY_WALK_NUDGE_EVERY": "1e9", "LOYALTY_CONFIG": str(config_path)}
    gold, silver, buyer, newcomer = same_partition(4, partition=2)
    october = [
        *(receipt(f"WG-{n}", gold, f"2026-10-0{n}T12:00:00+02:00", "60.00") for n in range(1, 5)),
        *(receipt(f"WS-{n}", silver, f"2026-10-1{n}T12:00:00+02:00", "75.00") for n in range(1, 3)),
        receipt("WY-1", buyer, "2026-10-21T12:00:00+02:00", "10.00"),
    ]
    november = [receipt("WY-2", buyer, "2026-11-02T09:00:00+01:00", "10.00")]  # starts the walk to November
    december = [receipt("WN-1", newcomer, "2026-12-01T01:30:00+01:00", "5.00")]  # moves the frontier again
    now = "2026-12-02T12:00:00+00:00"
    pipeline.start_worker(LOYALTY_CLOCK_START=now, **stopped)
    await outputs.start()
    await send(pipeline, october + november)
    await answered(outputs, [r["receipt_id"] for r in october + november])
    await asyncio.sleep(2.0)
    assert closes(outputs, pipeline, "2026-10") == {}  # the walk does not move by itself
    await send(pipeline, december)
    await outputs.wait_for(lambda: len(closes(outputs, pipeline, "2026-10")) >= 2, what="October's closes")
    # Each close is its own change with its own cause, as the reference has them.
    assert {
        c: (e["previous"], e["current"], e["caused_by"]) for c, e in closes(outputs, pipeline, "2026-10").items()
    } == {
        gold: ("bronze", "gold", "WY-2"),
        silver: ("bronze", "silver", "WY-2"),
    }
