"""`loyalty replay`: new rules go live, with the state a fresh pipeline would have built under them."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from config.loading import DEFAULT_CONFIG, parse_config
from streams.history.reading import log_ends, reading
from streams.local.probe import OutputReader
from tests.conftest import TEST_NOW, PipelineUnderTest
from tests.integration.test_pipeline import answered, receipt, records, send
from tests.integration.test_what_if import NEW_RULES, level_for, october_history, run_cli
from tests.reference import latest_statuses
from tests.reference import reference as core_reference

pytestmark = pytest.mark.integration


async def committed_offsets(bootstrap: str, group: str, pipeline: PipelineUnderTest) -> dict[str, int]:
    """Per output topic, the offsets a consumer group has committed, summed over partitions."""
    topics = [pipeline.topic(t) for t in ("offer-triggers", "receipt-messages")]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        found: dict[str, int] = {}
        for topic in topics:
            for partition in consumer.partitions_for_topic(topic) or ():
                offset = await consumer.committed(TopicPartition(topic, partition))
                found[topic] = found.get(topic, 0) + (offset or 0)
        return found
    finally:
        await consumer.stop()


async def topic_sizes(pipeline: PipelineUnderTest) -> dict[str, int]:
    topics = [pipeline.topic(t) for t in ("offer-triggers", "receipt-messages")]
    async with reading(pipeline.bootstrap) as consumer:
        partitions = [TopicPartition(t, n) for t in topics for n in consumer.partitions_for_topic(t) or ()]
        ends = await log_ends(consumer, pipeline.bootstrap, partitions)
    sizes: dict[str, int] = {}
    for tp, end in ends.items():
        sizes[tp.topic] = sizes.get(tp.topic, 0) + end
    return sizes


def november(customers: list[str], first: int, days: range, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        receipt(f"N-{first + n}", c, f"2026-11-{rng.choice(days):02d}T10:00:00+01:00", str(rng.randrange(5, 60)))
        for n, c in enumerate(customers)
    ]


async def test_replay_rebuilds_what_a_fresh_pipeline_under_the_new_rules_would_hold(
    pipeline: PipelineUnderTest, outputs: OutputReader, tmp_path: Path
) -> None:
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    for old, new in NEW_RULES.items():
        text = text.replace(old, new)
    new_config = parse_config(text)
    new_path = tmp_path / "gold-from-250.yaml"
    new_path.write_text(text, encoding="utf-8")

    # The old rules live: October, then November's first week, which closes October for everyone.
    october, totals = october_history(60, seed=8)
    customers = sorted(totals)
    first_week = november(customers, 0, range(2, 8), seed=1)
    old = pipeline.start_worker()
    await outputs.start()
    await send(pipeline, october + first_week)
    await answered(outputs, [r["receipt_id"] for r in october + first_week])
    await asyncio.sleep(2.0)
    assert old.stop() == 0
    old_levels = {
        c: {s["status_system"]: s["status"] for s in statuses}
        for c, statuses in latest_statuses(outputs, pipeline.prefix).items()
    }
    # November's levels as each set of rules has them (small November receipts: no instant upgrades).
    assert {c: old_levels[c]["monthly_amount"] for c in customers} == {
        c: level_for(t, 100, 200) for c, t in totals.items()
    }

    app_id = f"{pipeline.prefix}v2"
    # Split across two processes (as by default on a longer history), so the split is what is checked end to end.
    done = run_cli(
        pipeline, "replay", "--config", str(new_path), "--from", "2026-10-01", "--app-id", app_id, "--workers", "2"
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "(processes: 2," in done.stdout
    should_change = {
        c: (level_for(t, 100, 200), level_for(t, 120, 250))
        for c, t in totals.items()
        if level_for(t, 100, 200) != level_for(t, 120, 250)
    }
    assert should_change  # the case is real
    await outputs.wait_for(
        lambda: (
            sum(c["reason"] == "recalculation" for c in records(outputs, pipeline, "status-changes"))
            >= len(should_change)
        ),
        what="the recalculations",
    )
    recalculated = [c for c in records(outputs, pipeline, "status-changes") if c["reason"] == "recalculation"]
    assert {c["customer_id"]: (c["previous"], c["current"]) for c in recalculated} == should_change
    assert len(recalculated) == len(should_change)
    assert {c["caused_by"] for c in recalculated} == {f"recalculation:{app_id}"}
    # The new namespace's sinks start after everything the old ones had: offers and
    # messages are not written again.
    sizes = await topic_sizes(pipeline)
    assert sizes[pipeline.topic("offer-triggers")] > 0 and sizes[pipeline.topic("receipt-messages")] > 0
    for sink in ("redis", "postgres"):
        assert await committed_offsets(pipeline.bootstrap, f"{app_id}-sink-{sink}", pipeline) == sizes

    # The new rules go live in the new namespace; the till sends more of November, and
    # resends one receipt from each month that the replay counted already.
    worker = pipeline.start_worker(LOYALTY_APP_ID=app_id, LOYALTY_CONFIG=str(new_path))
    later = november(customers[::3], 1000, range(9, 21), seed=2)
    resent = [october[0], first_week[0]]
    await send(pipeline, later + resent)
    await answered(outputs, [r["receipt_id"] for r in later])
    await asyncio.sleep(3.0)

    # A fresh pipeline under the new rules, fed everything once, holds exactly this.
    fresh = core_reference(new_config, october + first_week + later + resent, TEST_NOW)
    expected = fresh.final
    live = latest_statuses(outputs, pipeline.prefix)
    assert {c: live[c] for c in customers} == {c: expected[c] for c in customers}, worker.log_tail()
    # The till that resent November's receipt prints what the new rules say of it: the replay
    # stored its message unrendered, and the worker rendered it for the resend.
    rid = first_week[0]["receipt_id"]
    await outputs.wait_for(
        lambda: sum(m["receipt_id"] == rid for m in records(outputs, pipeline, "receipt-messages")) >= 2,
        what="the resent receipt's message",
    )
    first, again = [
        {k: v for k, v in m.items() if k != "_key"}  # the record's key, not the event's
        for m in records(outputs, pipeline, "receipt-messages")
        if m["receipt_id"] == rid
    ]
    assert again == fresh.events[again["event_id"]] != first, worker.log_tail()
    # ...and nothing was counted twice: November's counter is each customer's November sum once.
    for c in customers:
        spent = sum(Decimal(r["total"]) for r in first_week + later if r["customer_id"] == c)
        (amount,) = [s for s in live[c] if s["status_system"] == "monthly_amount"]
        assert Decimal(amount["counter"]) == spent


def test_replay_refuses_the_namespace_in_use_and_a_bad_configuration(
    pipeline: PipelineUnderTest, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT_CONFIG.read_text(encoding="utf-8").replace("above: 200", "above: 50"), encoding="utf-8")
    done = run_cli(pipeline, "replay", "--config", str(bad), "--from", "2026-10-01", "--app-id", "x")
    assert done.returncode == 1
    assert "status_systems[0].levels[2].above: must be greater than 100" in done.stderr
    in_use = pipeline.env()["LOYALTY_APP_ID"]
    done = run_cli(pipeline, "replay", "--config", str(DEFAULT_CONFIG), "--from", "2026-10-01", "--app-id", in_use)
    assert done.returncode == 1
    assert "is the namespace in use" in done.stderr


async def test_replay_counts_only_the_receipts_issued_from_its_from_date(
    pipeline: PipelineUnderTest, outputs: OutputReader
) -> None:
    """`--from` limits the receipts by `issued_at`, split or not: one issued before it is left
    out even when it arrives after one issued since."""
    # Dated in October: a November receipt would move the frontier past October, and close
    # C-OCT's October as soon as its first receipt makes it a customer.
    warm = receipt("W-1", "C-WARM", "2026-10-02T10:00:00+02:00", "10.00")
    old = pipeline.start_worker()  # creates the topics, and is stopped before the history grows
    await outputs.start()
    await send(pipeline, [warm])
    await answered(outputs, ["W-1"])
    assert old.stop() == 0
    september_only = receipt("S-1", "C-SEPT", "2026-09-20T10:00:00+02:00", "300.00")
    october = receipt("O-1", "C-OCT", "2026-10-05T10:00:00+02:00", "40.00")
    late = receipt("S-2", "C-OCT", "2026-09-28T10:00:00+02:00", "250.00")  # issued before, sent after
    await send(pipeline, [september_only, october, late])
    for workers in ("2", "1"):
        done = run_cli(
            pipeline,
            "replay",
            "--config",
            str(DEFAULT_CONFIG),
            "--from",
            "2026-10-01",
            "--app-id",
            f"{pipeline.prefix}from-{workers}",
            "--workers",
            workers,
        )
        assert done.returncode == 0, done.stderr + done.stdout
        assert f"(processes: {workers}," in done.stdout
        assert "replayed 2 inputs (0 refused as the worker would) for 2 customers" in done.stdout, done.stdout
    await outputs.wait_for(
        lambda: "C-OCT" in latest_statuses(outputs, pipeline.prefix), what="the rebuilt customers' snapshots"
    )
    live = latest_statuses(outputs, pipeline.prefix)
    assert "C-SEPT" not in live
    (amount,) = [s for s in live["C-OCT"] if s["status_system"] == "monthly_amount"]
    assert Decimal(amount["counter"]) == Decimal("40.00")
