"""The spine through its public topics, on a real Kafka-protocol broker (embedded Tansu).

Expected events are written out by hand for the scenarios that matter, and the
whole output is also checked against the pure core run over the same input, so
the pipeline can neither lose nor invent nor double-count anything.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from typing import Any

import pytest
from aiohttp import ClientSession
from aiokafka import AIOKafkaProducer

from models.schema import LoyaltyConfig
from streams.app import inputs_topic
from streams.envelope import RECEIPT, Envelope, Source, encode_batch, partition_for
from streams.local.probe import OutputReader, produce
from streams.local.service import free_port
from tests.conftest import TEST_NOW, PipelineUnderTest
from tests.reference import DEFAULT_PARTITIONS, assert_same, snapshots_settled
from tests.reference import observed as observed_events
from tests.reference import reference as core_reference

pytestmark = pytest.mark.integration

NOW = TEST_NOW


def receipt(receipt_id: str, customer_id: str | None, issued_at: str, total: str, **extra: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "receipt_id": receipt_id,
        "type": "sale",
        "pos_id": "POS7",
        "store_id": "S1",
        "issued_at": issued_at,
        "currency": "EUR",
        "total": total,
    }
    if customer_id is not None:
        value["customer_id"] = customer_id
    value.update(extra)
    return value


async def send(pipeline: PipelineUnderTest, receipts: list[dict[str, Any]], topic: str = "receipts") -> None:
    await produce(
        pipeline.bootstrap,
        pipeline.topic(topic),
        [((r.get("customer_id") or r.get("card_number") or "x").encode(), json.dumps(r).encode()) for r in receipts],
    )


def records(outputs: OutputReader, pipeline: PipelineUnderTest, topic: str) -> list[dict[str, Any]]:
    return outputs.records[pipeline.topic(topic)]


def messages_for(outputs: OutputReader, pipeline: PipelineUnderTest, receipt_id: str) -> list[dict[str, Any]]:
    return [m for m in records(outputs, pipeline, "receipt-messages") if m["receipt_id"] == receipt_id]


async def answered(outputs: OutputReader, receipt_ids: list[str], timeout: float = 90.0) -> None:
    await outputs.wait_for(
        lambda: all(rid in outputs.arrivals for rid in receipt_ids),
        timeout=timeout,
        what=f"messages for {len(receipt_ids)} receipts",
    )


def reference(config: LoyaltyConfig, receipts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every event the pure core emits for these receipts, by event id."""
    return core_reference(config, receipts, NOW).events


def observed(outputs: OutputReader, pipeline: PipelineUnderTest) -> dict[str, dict[str, Any]]:
    """Every event the pipeline emitted, by id; a repeated id must repeat the same event."""
    return observed_events(outputs, pipeline.prefix)


async def matches_the_core(outputs: OutputReader, pipeline: PipelineUnderTest, expected: dict[str, Any]) -> None:
    """Once the latest snapshots are out (they go at the worker's commits), what was published is the core's."""
    await snapshots_settled(outputs, pipeline.prefix, expected)
    assert_same(observed(outputs, pipeline), expected)


async def test_receipts_yield_the_exact_events(
    pipeline: PipelineUnderTest, outputs: OutputReader, config: LoyaltyConfig
) -> None:
    pipeline.start_worker()
    await outputs.start()
    sent = [
        receipt("S-1", "C-1", "2026-09-03T12:00:00+02:00", "60.00"),
        receipt("S-2", "C-1", "2026-09-10T12:00:00+02:00", "40.00"),
        receipt("S-3", "C-1", "2026-09-30T23:59:59+02:00", "50.00"),
        receipt("S-4", "C-1", "2026-10-01T00:00:00+02:00", "10.00"),
    ]
    await send(pipeline, sent)
    await answered(outputs, ["S-1", "S-2", "S-3", "S-4"])
    await asyncio.sleep(0.5)  # the status changes and offers of S-4 are sent before its message

    changes = records(outputs, pipeline, "status-changes")
    assert [(c["status_system"], c["direction"], c["reason"], c["current"]) for c in changes] == [
        ("monthly_amount", "assign", "initial", "bronze"),
        ("monthly_count", "assign", "initial", "basic"),
        ("monthly_amount", "upgrade", "period_close", "silver"),
    ]
    close = changes[2]
    assert close["previous"] == "bronze"
    assert close["effective_from"] == "2026-10-01T00:00:00+02:00"
    assert close["counter"] == "150.00"
    assert close["period"] == "2026-09"
    assert close["caused_by"] == "S-4"
    assert close["_key"] == "C-1"

    (message,) = messages_for(outputs, pipeline, "S-4")
    assert message["lines"] == [
        "Your status: Silver (5% off)",
        "Spend 90.01 EUR more in October to be Silver in November",
        "5 more purchases in October make you Favorite customer in November",
        "Congratulations! You are now Silver.",
    ]
    assert message["_key"] == "POS7"
    (first,) = messages_for(outputs, pipeline, "S-1")
    assert first["lines"][:2] == [
        "Your status: Bronze (2% off)",
        "Spend 40.01 EUR more in September to be Silver in October",
    ]

    discounts = [o for o in records(outputs, pipeline, "offer-triggers") if o["offer_id"] == "amount_status_discount"]
    assert [(o["receipt_id"], o["percent"], o["amount"]) for o in discounts] == [
        ("S-1", 2, "1.20"),
        ("S-2", 2, "0.80"),
        ("S-3", 2, "1.00"),
        ("S-4", 5, "0.50"),
    ]
    await matches_the_core(outputs, pipeline, reference(config, sent))


async def test_fifth_purchase_and_instant_upgrade(
    pipeline: PipelineUnderTest, outputs: OutputReader, config: LoyaltyConfig
) -> None:
    pipeline.start_worker()
    await outputs.start()
    sent = [receipt(f"F-{n}", "C-5", f"2026-09-0{n}T10:00:00+02:00", "10.00") for n in range(1, 5)]
    sent.append(receipt("F-5", "C-5", "2026-09-05T10:00:00+02:00", "100.01"))
    await send(pipeline, sent)
    await answered(outputs, ["F-5"])
    await asyncio.sleep(0.5)

    bonus = [o for o in records(outputs, pipeline, "offer-triggers") if o["offer_id"] == "fifth_purchase_bonus"]
    assert [(o["receipt_id"], o["action"], o["points"]) for o in bonus] == [("F-5", "bonus_points", 100)]
    instant = [c for c in records(outputs, pipeline, "status-changes") if c["reason"] == "instant_rule"]
    assert [(c["current"], c["valid_until"], c["caused_by"]) for c in instant] == [
        ("gold", "2026-10-01T00:00:00+02:00", "F-5")
    ]
    await matches_the_core(outputs, pipeline, reference(config, sent))


async def test_a_resent_receipt_counts_once_and_repeats_its_message(
    pipeline: PipelineUnderTest, outputs: OutputReader, config: LoyaltyConfig
) -> None:
    pipeline.start_worker()
    await outputs.start()
    first = receipt("D-1", "C-2", "2026-09-03T12:00:00+02:00", "30.00")
    second = receipt("D-2", "C-2", "2026-09-04T12:00:00+02:00", "20.00")
    await send(pipeline, [first, first, second])
    await answered(outputs, ["D-2"])
    await outputs.wait_for(
        lambda: len(messages_for(outputs, pipeline, "D-1")) == 2, what="the resent receipt's message"
    )

    one, again = messages_for(outputs, pipeline, "D-1")
    assert one == again
    (after,) = messages_for(outputs, pipeline, "D-2")
    # 50.00 counted, not 80.00: the resend did not count.
    assert after["lines"][1] == "Spend 50.01 EUR more in September to be Silver in October"
    # The till gets its message again; the offer it earned was granted once, and is not repeated.
    offers = [o for o in records(outputs, pipeline, "offer-triggers") if o["receipt_id"] == "D-1"]
    assert [o["offer_id"] for o in offers] == ["amount_status_discount"]
    await matches_the_core(outputs, pipeline, reference(config, [first, second]))


async def test_a_copy_routed_again_through_loyalty_inputs_is_dropped_while_a_till_s_resend_is_answered(
    pipeline: PipelineUnderTest, outputs: OutputReader, config: LoyaltyConfig, http: ClientSession
) -> None:
    port = free_port()
    pipeline.start_worker(WEB_PORT=str(port))
    await outputs.start()
    first = receipt("CP-1", "C-80", "2026-09-03T12:00:00+02:00", "30.00")
    # A producer whose partitioner is not Kafka's default puts C-80's receipts on another
    # partition than its own: they cross loyalty-inputs to C-80's.
    elsewhere = (partition_for("C-80", DEFAULT_PARTITIONS) + 1) % DEFAULT_PARTITIONS
    producer = AIOKafkaProducer(bootstrap_servers=pipeline.bootstrap)
    await producer.start()
    try:
        receipts = pipeline.topic("receipts")
        sent = await producer.send_and_wait(receipts, json.dumps(first).encode(), key=b"C-80", partition=elsewhere)
        await answered(outputs, ["CP-1"])
        # What a worker that crashed before its commit does: it reads CP-1 again from the
        # receipts topic and hands it on a second time, with the same source coordinates.
        source = Source(receipts, sent.partition, sent.offset, sent.timestamp / 1000)
        copy = encode_batch([Envelope(RECEIPT, json.dumps(first), source)])
        inputs = pipeline.topic(inputs_topic(f"{pipeline.prefix}app"))  # the namespace prefixes it too
        await producer.send_and_wait(inputs, copy, partition=partition_for("C-80", DEFAULT_PARTITIONS))
        # Then the till sends CP-1 again, a new record: that one is answered with its message.
        marker = receipt("CP-2", "C-80", "2026-09-04T12:00:00+02:00", "20.00")
        for value in (first, marker):
            await producer.send_and_wait(receipts, json.dumps(value).encode(), key=b"C-80", partition=elsewhere)
    finally:
        await producer.stop()
    # One till's messages share a partition: once CP-2's is read, every CP-1 message before it is.
    await answered(outputs, ["CP-2"])

    async def copies() -> str | None:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
        return next((line for line in text.splitlines() if line.startswith("loyalty_input_copies_total")), None)

    assert await copies() == "loyalty_input_copies_total 1.0"
    assert len(messages_for(outputs, pipeline, "CP-1")) == 2  # the first time and the till's, not the copy's
    await matches_the_core(outputs, pipeline, reference(config, [first, marker]))


async def test_malformed_input_goes_to_dead_letters_and_the_next_receipt_is_processed(
    pipeline: PipelineUnderTest, outputs: OutputReader
) -> None:
    pipeline.start_worker()
    await outputs.start()
    await produce(pipeline.bootstrap, pipeline.topic("receipts"), [(b"C-3", b"{not json"), (b"C-3", b"\xff\xfe")])
    negative = receipt("BAD-1", "C-3", "2026-09-03T12:00:00+02:00", "-5.00")
    good = receipt("OK-1", "C-3", "2026-09-03T12:00:00+02:00", "5.00")
    await send(pipeline, [negative, good])
    await produce(
        pipeline.bootstrap, pipeline.topic("status-commands"), [(b"C-3", b'{"command_id": "X", "type": "?"}')]
    )
    await answered(outputs, ["OK-1"])
    await outputs.wait_for(lambda: len(records(outputs, pipeline, "dead-letters")) == 4, what="four dead letters")

    letters = records(outputs, pipeline, "dead-letters")
    by_value = {letter["value"]: letter for letter in letters}
    not_json = by_value["{not json"]
    assert not_json["error"].startswith("not JSON")
    assert not_json["topic"] == pipeline.topic("receipts")
    assert isinstance(not_json["offset"], int) and isinstance(not_json["partition"], int)
    binary = next(letter for letter in letters if letter["value_encoding"] == "base64")
    assert binary["value"] == "//4="
    assert "is negative" in by_value[json.dumps(negative)]["error"]
    command = next(letter for letter in letters if letter["topic"] == pipeline.topic("status-commands"))
    assert "unknown command" in command["error"]
    assert len(messages_for(outputs, pipeline, "OK-1")) == 1


async def test_a_restarted_worker_recovers_its_table_and_counts_nothing_twice(
    pipeline: PipelineUnderTest, outputs: OutputReader, config: LoyaltyConfig
) -> None:
    first_worker = pipeline.start_worker()
    await outputs.start()
    september = [
        receipt("R-1", "C-4", "2026-09-03T12:00:00+02:00", "80.00"),
        receipt("R-2", "C-4", "2026-09-04T12:00:00+02:00", "80.00"),
        receipt("R-3", "C-4", "2026-09-05T12:00:00+02:00", "80.00"),
    ]
    await send(pipeline, september)
    await answered(outputs, ["R-1", "R-2", "R-3"])
    assert first_worker.stop() == 0

    pipeline.start_worker()
    october = receipt("R-4", "C-4", "2026-10-02T12:00:00+02:00", "1.00")
    await send(pipeline, [october])
    await answered(outputs, ["R-4"])
    await asyncio.sleep(0.5)

    # Delivery is at least once: a rebalance in the new worker may send R-4's events twice, with equal ids.
    closes = {c["event_id"]: c for c in records(outputs, pipeline, "status-changes") if c["reason"] == "period_close"}
    # 240.00 in September survived the restart in the table: Gold for October.
    assert [(c["previous"], c["current"], c["counter"], c["caused_by"]) for c in closes.values()] == [
        ("bronze", "gold", "240.00", "R-4")
    ]
    assert {m["lines"][0] for m in messages_for(outputs, pipeline, "R-4")} == {"Your status: Gold (10% off)"}
    for receipt_id in ("R-1", "R-2", "R-3"):
        assert len(messages_for(outputs, pipeline, receipt_id)) == 1, f"{receipt_id} was processed again"
    await matches_the_core(outputs, pipeline, reference(config, [*september, october]))


async def test_a_killed_worker_loses_nothing_and_double_counts_nothing(
    pipeline: PipelineUnderTest, outputs: OutputReader, config: LoyaltyConfig
) -> None:
    rng = random.Random(11)
    sent: list[dict[str, Any]] = []
    for n in range(600):
        day = 1 + n * 50 // 600  # 1 September to 20 October
        month, day = (9, day) if day <= 30 else (10, day - 30)
        customer = f"K-{rng.randrange(25)}"
        total = f"{rng.randrange(100, 9000) / 100:.2f}"
        sent.append(receipt(f"K-{n:04d}", customer, f"2026-{month:02d}-{day:02d}T12:00:00+02:00", total))
    worker = pipeline.start_worker()
    await outputs.start()
    await send(pipeline, sent[:300])
    await outputs.wait_for(lambda: len(outputs.arrivals) >= 100, what="the first hundred answers")
    worker.kill()
    await send(pipeline, sent[300:])
    pipeline.start_worker()
    await answered(outputs, [r["receipt_id"] for r in sent], timeout=180)
    await asyncio.sleep(1.0)

    expected = reference(config, sent)
    await matches_the_core(outputs, pipeline, expected)


async def test_close_period_closes_it_for_every_customer(
    pipeline: PipelineUnderTest, outputs: OutputReader, config: LoyaltyConfig
) -> None:
    pipeline.start_worker()
    await outputs.start()
    sent = [
        receipt("P-1", "C-7", "2026-09-10T12:00:00+02:00", "250.00"),
        receipt("P-2", "C-7", "2026-10-02T12:00:00+02:00", "5.00"),
        receipt("P-3", "C-8", "2026-09-12T12:00:00+02:00", "60.00"),
        receipt("P-4", "C-8", "2026-09-13T12:00:00+02:00", "60.00"),
    ]
    await send(pipeline, sent)
    await answered(outputs, ["P-1", "P-2", "P-3", "P-4"])

    subprocess.run(
        [sys.executable, "-m", "streams.cli", "close-period", "monthly_amount", "2026-10"],
        env=pipeline.env(),
        check=True,
        capture_output=True,
    )

    def closed() -> list[dict[str, Any]]:
        return [
            c
            for c in records(outputs, pipeline, "status-changes")
            if c["reason"] == "period_close" and c["caused_by"].startswith("close-")
        ]

    await outputs.wait_for(lambda: len(closed()) == 3, what="three period-close status changes")
    assert sorted((c["customer_id"], c["period"], c["previous"], c["current"], c["counter"]) for c in closed()) == [
        ("C-7", "2026-10", "gold", "bronze", "5.00"),
        ("C-8", "2026-09", "bronze", "silver", "120.00"),
        ("C-8", "2026-10", "silver", "bronze", "0.00"),
    ]
    c7 = next(c for c in closed() if c["customer_id"] == "C-7")
    assert c7["effective_from"] == "2026-11-01T00:00:00+01:00"
    assert c7["direction"] == "downgrade"
