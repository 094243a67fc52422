"""A flood of malformed inputs through a real worker with both sinks: every bad one is
dead-lettered exactly once with a reason, none of them produces an event, every good receipt
among them is answered and stored, and the worker is still there at the end.

The bad inputs cover every way one has stopped, wedged or escaped the pipeline (lone
surrogates, invalid UTF-8, NaN and Infinity, other encodings, NUL and other control
characters, instants off the calendar, dates with trailing text) and more besides: random
bytes, truncated and deeply nested JSON, wrong types, huge values, unknown types, names given
twice, refusals only the rules can make. Generated from a fixed seed.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession
from aiokafka import AIOKafkaProducer

from streams.local.probe import OutputReader
from tests.conftest import PipelineUnderTest
from tests.integration.test_serving import Served, eventually, get_json

pytestmark = pytest.mark.integration

SEED = 20261207
BAD_RECEIPTS, BAD_EVENTS, BAD_COMMANDS, GOOD_RECEIPTS = 800, 100, 100, 100


def good_receipt(n: int) -> dict[str, Any]:
    return {
        "receipt_id": f"GOOD-R-{n}",
        "type": "sale",
        "customer_id": f"GOOD-{n % 20}",
        "pos_id": f"POS{n % 5}",
        "store_id": "S1",
        "issued_at": f"2026-11-{1 + n % 21:02d}T{8 + n % 12:02d}:{n % 60:02d}:00+01:00",
        "currency": "EUR",
        "total": f"{10 + n}.50",
        "lines": [{"sku": "A-1", "qty": 1, "price": f"{10 + n}.50"}],
    }


def fuzz_receipt(n: int) -> dict[str, Any]:
    """A receipt that would be counted for a FUZZ customer, before something is done to it."""
    value = good_receipt(n)
    value.update(receipt_id=f"FUZZ-R-{n}", customer_id=f"FUZZ-{n % 50}")
    return value


def text(value: dict[str, Any]) -> str:
    return json.dumps(value)


class Fuzz:
    """Malformed records for one input topic: each call picks a way to break one."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def common(self, base: dict[str, Any]) -> bytes:
        """Breakage that fits any topic's record."""
        rng = self.rng
        raw = text(base)
        kind = rng.randrange(12)
        if kind == 0:
            return rng.randbytes(rng.randrange(1, 300))
        if kind == 1:
            return raw[: rng.randrange(1, len(raw) - 1)].encode()  # truncated
        if kind == 2:
            depth = rng.choice([20, 100, 1100, 5000])
            return (raw[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}").encode()
        if kind == 3:
            return raw.encode(rng.choice(["utf-16", "utf-32", "utf-8-sig", "utf-16-be"]))
        if kind == 4:  # invalid UTF-8 bytes inside a text
            return raw.encode().replace(b'"FUZZ', b'"FU\xff\xfeZZ', 1).replace(b'"C', b'"\xc3(C', 1)
        if kind == 5:
            return rng.choice([b"", b"null", b"[]", b'"text"', b"42", b"true", b"[{}]"])
        if kind == 6:  # a name twice, the second with other content
            name = rng.choice(list(base))
            return (raw[:-1] + f", {json.dumps(name)}: {json.dumps('other')}" + "}").encode()
        if kind == 7:  # a lone surrogate, escaped
            name = rng.choice([k for k, v in base.items() if isinstance(v, str)])
            return raw.replace(json.dumps(base[name]), json.dumps(base[name])[:-1] + '\\udfff"', 1).encode()
        if kind == 8:  # a control character, escaped
            name = rng.choice([k for k, v in base.items() if isinstance(v, str) and k != "type"])
            escape = rng.choice(["\\u0000", "\\u001b", "\\u0007", "\\u0085", "\\n", "\\u007f"])
            return raw.replace(json.dumps(base[name]), json.dumps(base[name])[:-1] + escape + '"', 1).encode()
        if kind == 9:  # a text far too long
            name = rng.choice([k for k, v in base.items() if isinstance(v, str) and k != "type"])
            return text({**base, name: "x" * rng.choice([201, 5000, 300_000])}).encode()
        if kind == 10:  # a wrong type
            name = rng.choice(list(base))
            return text({**base, name: rng.choice([[1], {"a": 1}, True, 12345678901234567890, -1.5])}).encode()
        return text({**base, "type": rng.choice(["refund", "void", "", "SALE", None, 7])}).encode()  # unknown type


class ReceiptFuzz(Fuzz):
    def __call__(self, n: int) -> bytes:
        rng, base = self.rng, fuzz_receipt(n)
        kind = rng.randrange(16)
        if kind < 6:
            return self.common(base)
        raw = text(base)
        if kind == 6:
            literal = rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
            name = rng.choice(["total", "qty", "price"])
            field = '"qty": 1' if name == "qty" else f'"{name}": "{base["total"]}"'
            return raw.replace(field, f'"{name}": {literal}').encode()
        if kind == 7:
            qty = rng.choice(["1e400", "1e200", str(10**30), "1000001", "0", "-1", "1e-400", "0.0000001"])
            return raw.replace('"qty": 1', f'"qty": {qty}').encode()
        if kind == 8:
            total = rng.choice(["-5.00", "1e30", "12.345", " 12.50", "1_000.00", "NaN", "Infinity", "0x10", "", "abc"])
            return text({**base, "total": total, "lines": [{"qty": 1, "price": total}]}).encode()
        if kind == 9:
            at = rng.choice(
                [
                    "0001-01-01T00:00:00+14:00",
                    "9999-12-31T23:59:59-14:00",
                    "1969-12-31T23:59:59+00:00",
                    "2026-11-03",
                    "2026-11-03T12:00:00",
                    "2031-01-01T00:00:00+00:00",  # beyond the future tolerance
                    "yesterday",
                ]
            )
            return text({**base, "issued_at": at}).encode()
        if kind == 10:
            return text({**base, "currency": rng.choice(["USD", "eur", "", None])}).encode()
        if kind == 11:  # lines that do not add up
            return text({**base, "lines": [{"qty": 2, "price": base["total"]}]}).encode()
        if kind == 12:  # a return of a receipt nobody counted: only the rules can refuse it
            return text({**base, "type": "return", "original_receipt_id": f"NEVER-{n}"}).encode()
        if kind == 13:  # neither customer nor card, or a reserved customer id
            return text({**base, "customer_id": rng.choice([None, "card:1", "partition:2"])}).encode()
        if kind == 14:
            missing = rng.choice(["receipt_id", "pos_id", "total", "issued_at", "currency"])
            return text({k: v for k, v in base.items() if k != missing}).encode()
        return text({**base, "receipt_id": rng.choice(["", None, 42])}).encode()


class EventFuzz(Fuzz):
    def __call__(self, n: int) -> bytes:
        rng = self.rng
        base = {
            "event_id": f"FUZZ-E-{n}",
            "type": "registered",
            "customer_id": f"FUZZ-C-{n}",
            "occurred_at": "2025-05-01T10:00:00+00:00",
            "birth_date": "1990-11-25",
            "channel": "pos",
        }
        kind = rng.randrange(8)
        if kind < 3:
            return self.common(base)
        if kind == 3:
            return text(
                {**base, "birth_date": rng.choice(["1990-11-25xyz", "1990-13-01", "25.11.1990", "1800-01-01"])}
            ).encode()
        if kind == 4:
            return text({**base, "occurred_at": rng.choice(["0001-01-01T00:00:00+14:00", "2026-11-22", "x"])}).encode()
        if kind == 5:  # only the rules refuse these: an unknown card, a customer nobody registered
            return text({**base, "type": "card_linked", "card_number": f"NO-CARD-{n}"}).encode()
        if kind == 6:
            return text({**base, "type": "profile_updated"}).encode()
        return text({**base, "type": "friend_invited"}).encode()  # no invitee


class CommandFuzz(Fuzz):
    def __call__(self, n: int) -> bytes:
        rng = self.rng
        base = {
            "command_id": f"FUZZ-CC-{n}",
            "type": "set_status",
            "customer_id": f"FUZZ-C-{n}",
            "status_system": "monthly_amount",
            "status": "gold",
            "valid_until": "2026-12-31",
            "reason": "fuzz",
            "operator": "agent-17",
        }
        kind = rng.randrange(8)
        if kind < 3:
            return self.common(base)
        if kind == 3:
            return text(
                {**base, "valid_until": rng.choice(["2026-12-31garbage", "31.12.2026", "0001-01-01", "2026-02-30"])}
            ).encode()
        if kind == 4:
            return text({**base, "status": rng.choice(["platinum", "", "GOLD"])}).encode()
        if kind == 5:
            return text({**base, "status_system": rng.choice(["nope", "", "monthly_amount\u0000"])}).encode()
        if kind == 6:
            period = rng.choice(["1-01", "0001-01", "2026-13", "2026-11\n", "\uff12\uff10\uff12\uff16-11", "2026-W45"])
            return text(
                {
                    "command_id": f"FUZZ-CC-{n}",
                    "type": "close_period",
                    "status_system": "monthly_amount",
                    "period": period,
                }
            ).encode()
        return text(
            {"command_id": f"FUZZ-CC-{n}", "type": "run_campaigns", "date": rng.choice(["", "tomorrow", None])}
        ).encode()


Sent = tuple[str, int, int]  # topic, partition, offset


async def send_all(bootstrap: str, records: list[tuple[str, bytes | None, bytes]]) -> list[Sent]:
    """Sends records in order; returns where each landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, max_request_size=2_000_000)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=key, value=value) for topic, key, value in records]
        await producer.flush()
        return [(topic, (m := await f).partition, m.offset) for (topic, _, _), f in zip(records, futures, strict=True)]
    finally:
        await producer.stop()


async def test_a_flood_of_malformed_inputs_is_dead_lettered_and_the_good_receipts_go_through(
    served: Served, pipeline: PipelineUnderTest, outputs: OutputReader, http: ClientSession
) -> None:
    served.start()
    await outputs.start()
    rng = random.Random(SEED)
    fuzzers: dict[str, Callable[[int], bytes]] = {
        "receipts": ReceiptFuzz(rng),
        "customer-events": EventFuzz(rng),
        "status-commands": CommandFuzz(rng),
    }
    plan = ["receipts"] * BAD_RECEIPTS + ["customer-events"] * BAD_EVENTS + ["status-commands"] * BAD_COMMANDS
    rng.shuffle(plan)
    records: list[tuple[str, bytes | None, bytes]] = []
    bad: list[int] = []  # indexes into records
    good_ids: list[str] = []
    for n, topic in enumerate(plan):
        key = rng.choice([None, f"FUZZ-{n % 50}".encode(), b"\xff\xfe", b"FUZZ-\x00"])
        bad.append(len(records))
        records.append((pipeline.topic(topic), key, fuzzers[topic](n)))
        if n % (len(plan) // GOOD_RECEIPTS) == 0 and len(good_ids) < GOOD_RECEIPTS:
            receipt = good_receipt(len(good_ids))
            good_ids.append(receipt["receipt_id"])
            records.append((pipeline.topic("receipts"), receipt["customer_id"].encode(), text(receipt).encode()))
    assert len(bad) >= 1000 and len(good_ids) == GOOD_RECEIPTS
    landed = await send_all(pipeline.bootstrap, records)
    bad_places = Counter(landed[i] for i in bad)
    assert max(bad_places.values()) == 1

    dead = outputs.records[pipeline.topic("dead-letters")]
    await outputs.wait_for(lambda: len(dead) >= len(bad), timeout=240, what=f"{len(bad)} dead letters")

    def good_messages() -> set[str]:
        return {m["receipt_id"] for m in outputs.records[pipeline.topic("receipt-messages")]}

    await outputs.wait_for(lambda: set(good_ids) <= good_messages(), timeout=120, what="the good receipts' messages")

    # A receipt after the flood is answered as any other.
    after = good_receipt(GOOD_RECEIPTS)
    after["receipt_id"] = "AFTER-1"
    await send_all(pipeline.bootstrap, [(pipeline.topic("receipts"), b"GOOD-1", text(after).encode())])
    await outputs.wait_for(lambda: "AFTER-1" in good_messages(), timeout=30, what="the receipt after the flood")

    # Every bad input dead-lettered exactly once, with a reason; nothing else was.
    lettered = Counter((d["topic"], d["partition"], d["offset"]) for d in dead)
    assert {place: lettered[place] for place in bad_places} == dict.fromkeys(bad_places, 1)
    assert sum(lettered.values()) == len(bad)
    assert all(d["error"] for d in dead)
    reasons = Counter(d["error"].split(":")[0] for d in dead)
    print("dead letters by the field or kind they name:", dict(reasons.most_common(12)))

    # No bad input produced an event: every event is a good receipt's (or of a good customer).
    allowed = {*good_ids, "AFTER-1"}
    for topic in ("receipt-messages", "status-changes", "offer-triggers", "customer-status"):
        for event in outputs.records[pipeline.topic(topic)]:
            assert not str(event.get("customer_id", "")).startswith("FUZZ"), (topic, event)
            assert event.get("receipt_id") in (None, *allowed), (topic, event)
            assert event.get("caused_by") is None or event["caused_by"] in allowed or topic == "status-changes"
    assert all(
        c["caused_by"] in allowed or c["reason"] in ("initial", "period_close")
        for c in outputs.records[pipeline.topic("status-changes")]
    )

    # Every good receipt stored in PostgreSQL and in Redis.
    async def stored_in_postgres() -> bool:
        try:
            connection = await asyncpg.connect(served.database_url)
        except (OSError, asyncpg.PostgresError):
            return False
        try:
            rows = await connection.fetch("SELECT receipt_id FROM receipt_messages")
        except asyncpg.PostgresError:
            return False
        finally:
            await connection.close()
        return allowed <= {r["receipt_id"] for r in rows}

    await eventually(stored_in_postgres, timeout=60, what="every good receipt in PostgreSQL")
    redis = aioredis.from_url(served.redis_url)
    try:

        async def stored_in_redis() -> bool:
            found = await redis.exists(*(f"{served.prefix}receipt-message:{rid}" for rid in allowed))
            return bool(found == len(allowed))

        await eventually(stored_in_redis, timeout=60, what="every good receipt in Redis")
        assert not [key async for key in redis.scan_iter(f"{served.prefix}customer:FUZZ*")]
    finally:
        await redis.aclose()

    # The worker is alive and healthy.
    (worker,) = pipeline.workers
    assert worker.running, worker.log_tail()
    code, health = await get_json(http, f"{served.base}/health")
    assert code == 200, health
    assert "We experienced a crash" not in worker.log_path.read_text(errors="replace")
