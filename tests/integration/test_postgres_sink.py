"""The PostgreSQL sink against a real server: schema, column values, idempotency, restarts."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from sinks.base import CUSTOMER_STATUS, OFFER_TRIGGER, RECEIPT_MESSAGE, STATUS_CHANGE, SinkRecord, SinkUnavailable
from sinks.postgres import PostgresSink, load_migrations, with_database
from streams.local.postgres import EmbeddedPostgres, postgres_or_embedded

pytestmark = pytest.mark.integration

CET = timezone(timedelta(hours=1))
EVENT_TABLES = ("status_changes", "offer_triggers", "receipt_messages")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def server_dsn() -> Iterator[str]:
    """The configured server (DATABASE_URL or the default), or an embedded one when nothing answers there."""
    with postgres_or_embedded(os.environ.get("DATABASE_URL", "postgresql://postgres@localhost:5432/loyalty")) as dsn:
        yield dsn


@asynccontextmanager
async def fresh_database(server_dsn: str) -> AsyncIterator[str]:
    """A DSN naming a database that does not exist yet; dropped afterwards."""
    name = f"loyalty_test_{uuid.uuid4().hex[:10]}"
    try:
        yield with_database(server_dsn, name)
    finally:
        conn = await asyncpg.connect(with_database(server_dsn, "postgres"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="module")
async def dsn(server_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(server_dsn) as database:
        yield database


@pytest.fixture(scope="module")
async def sink(dsn: str) -> AsyncIterator[PostgresSink]:
    started = PostgresSink(dsn)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture(scope="module")
async def db(dsn: str, sink: PostgresSink) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


def status_change(customer_id: str, **overrides: Any) -> SinkRecord:
    value = {
        "event_id": uid("sc"),
        "customer_id": customer_id,
        "status_system": "monthly_amount",
        "previous": "bronze",
        "current": "silver",
        "direction": "upgrade",
        "reason": "period_close",
        "effective_from": "2026-12-01T00:00:00+01:00",
        "valid_until": None,
        "counter": "150.00",
        "period": "2026-11",
        "caused_by": "POS7-000200",
        "occurred_at": "2026-12-01T00:00:05+01:00",
        **overrides,
    }
    return SinkRecord(STATUS_CHANGE, customer_id, value)


def offer_trigger(customer_id: str, **overrides: Any) -> SinkRecord:
    value = {
        "event_id": uid("ot"),
        "customer_id": customer_id,
        "offer_id": "fifth_purchase_bonus",
        "action": "bonus_points",
        "points": 300,
        "expires_at": None,
        "receipt_id": "POS7-000123",
        "caused_by": "POS7-000123",
        "occurred_at": "2026-11-03T12:00:01+01:00",
        **overrides,
    }
    return SinkRecord(OFFER_TRIGGER, customer_id, value)


def receipt_message(customer_id: str | None, **overrides: Any) -> SinkRecord:
    value = {
        "event_id": uid("rm"),
        "receipt_id": uid("POS7"),
        "pos_id": "POS7",
        "customer_id": customer_id,
        "lines": ["Your status: Silver (5% off)", "Spend 79.50 EUR more in November to be Gold in December"],
        "caused_by": "POS7-000123",
        "occurred_at": "2026-11-03T12:00:01+01:00",
        **overrides,
    }
    return SinkRecord(RECEIPT_MESSAGE, "POS7", value)


def snapshot(customer_id: str, version: int, level: str = "silver", client_state: str = "registered") -> SinkRecord:
    value = {
        "event_id": f"cs-{customer_id}-{version}",
        "customer_id": customer_id,
        "client_state": client_state,
        "version": version,
        "statuses": [
            {
                "status_system": "monthly_amount",
                "status": level,
                "name": level.title(),
                "privileges": {"discount_percent": 5},
                "valid_until": "2026-11-30T23:59:59+01:00" if level == "gold" else None,
                "period": "2026-11",
                "counter": f"{100 + version}.50",
                "next_status": None,
                "remaining": None,
            },
            {
                "status_system": "visits",
                "status": "regular",
                "name": "Regular",
                "privileges": {},
                "valid_until": None,
                "period": "2026-W45",
                "counter": 3,
                "next_status": None,
                "remaining": None,
            },
        ],
        "caused_by": f"POS7-{version:06d}",
        "occurred_at": f"2026-11-03T12:{version % 60:02d}:00+01:00",
    }
    return SinkRecord(CUSTOMER_STATUS, customer_id, value)


async def count(db: asyncpg.Connection, table: str, event_ids: list[str]) -> int:
    n: int = await db.fetchval(f"SELECT count(*) FROM {table} WHERE event_id = ANY($1::text[])", event_ids)
    return n


async def test_start_creates_the_database_and_schema_once(server_dsn: str) -> None:
    async with fresh_database(server_dsn) as dsn:
        racing = [PostgresSink(dsn) for _ in range(3)]
        await asyncio.gather(*(s.start() for s in racing))  # workers starting at once: one applies, the rest wait
        conn = await asyncpg.connect(dsn)
        try:
            first = await conn.fetch("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in first] == [m.version for m in load_migrations()]
            assert first[0]["name"] == "initial"
            listed = await conn.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            tables = {r["table_name"] for r in listed}
            assert {*EVENT_TABLES, "customers", "customer_statuses", "schema_migrations"} <= tables

            again = PostgresSink(dsn)
            await again.start()
            await again.start()
            second = await conn.fetch("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
            assert second == first
            for s in [*racing, again]:
                await s.stop()
        finally:
            await conn.close()


async def test_an_unreachable_server_is_reported_as_unavailable() -> None:
    closed_port = EmbeddedPostgres().port  # nothing started on it
    sink = PostgresSink(f"postgresql://postgres@127.0.0.1:{closed_port}/loyalty", connect_timeout=2)
    with pytest.raises(SinkUnavailable, match=rf"127\.0\.0\.1:{closed_port}/loyalty"):
        await sink.start()
    assert not await sink.healthy()
    with pytest.raises(SinkUnavailable, match="not started"):
        await sink.write([status_change("C-1")])


async def test_a_status_change_lands_with_typed_columns(sink: PostgresSink, db: asyncpg.Connection) -> None:
    manual = status_change(
        uid("C"),
        reason="manual",
        direction="downgrade",
        previous="gold",
        current="bronze",
        valid_until="2026-12-31T23:59:59+01:00",
        counter="12.34",
        operator="agent-17",
        comment="wrong status fixed",
    )
    automatic = status_change(uid("C"), previous=None, direction="assign", reason="initial", counter="0.00")
    await sink.write([manual, automatic])

    row = await db.fetchrow("SELECT * FROM status_changes WHERE event_id = $1", manual.value["event_id"])
    assert row is not None
    assert row["customer_id"] == manual.value["customer_id"]
    assert (row["previous"], row["current"]) == ("gold", "bronze")
    assert (row["direction"], row["reason"]) == ("downgrade", "manual")
    assert row["counter"] == Decimal("12.34") and isinstance(row["counter"], Decimal)
    assert row["effective_from"] == datetime(2026, 12, 1, tzinfo=CET)
    assert row["valid_until"] == datetime(2026, 12, 31, 23, 59, 59, tzinfo=CET)
    assert row["occurred_at"] == datetime(2026, 12, 1, 0, 0, 5, tzinfo=CET)
    assert (row["period"], row["caused_by"]) == ("2026-11", "POS7-000200")
    assert (row["operator"], row["comment"]) == ("agent-17", "wrong status fixed")

    row = await db.fetchrow("SELECT * FROM status_changes WHERE event_id = $1", automatic.value["event_id"])
    assert row is not None
    assert row["previous"] is None and row["valid_until"] is None
    assert row["operator"] is None and row["comment"] is None
    assert row["counter"] == Decimal("0.00")


async def test_offer_triggers_land_with_points_or_discount(sink: PostgresSink, db: asyncpg.Connection) -> None:
    customer = uid("C")
    bonus = offer_trigger(customer, points=500, expires_at="2026-12-25T00:00:00+01:00")
    discount = offer_trigger(
        customer, offer_id="status_discount", action="discount", points=None, percent="7.5", amount="9.04"
    )
    del discount.value["expires_at"]
    await sink.write([bonus, discount])

    rows = {r["event_id"]: r for r in await db.fetch("SELECT * FROM offer_triggers WHERE customer_id = $1", customer)}
    assert set(rows) == {bonus.value["event_id"], discount.value["event_id"]}
    b = rows[bonus.value["event_id"]]
    assert (b["action"], b["points"], b["percent"], b["amount"]) == ("bonus_points", 500, None, None)
    assert b["expires_at"] == datetime(2026, 12, 24, 23, 0, tzinfo=UTC)
    assert (b["receipt_id"], b["caused_by"]) == ("POS7-000123", "POS7-000123")
    d = rows[discount.value["event_id"]]
    assert (d["action"], d["points"], d["expires_at"]) == ("discount", None, None)
    assert d["percent"] == Decimal("7.5") and d["amount"] == Decimal("9.04")
    assert d["occurred_at"] == datetime(2026, 11, 3, 11, 0, 1, tzinfo=UTC)


async def test_receipt_messages_keep_their_lines(sink: PostgresSink, db: asyncpg.Connection) -> None:
    member = receipt_message(uid("C"), lines=["Ihr Status: Silber (5 % Rabatt)", "Noch 79,50 € bis Gold"])
    anonymous = receipt_message(None, lines=[])
    await sink.write([member, anonymous])

    row = await db.fetchrow("SELECT * FROM receipt_messages WHERE event_id = $1", member.value["event_id"])
    assert row is not None
    assert json.loads(row["lines"]) == ["Ihr Status: Silber (5 % Rabatt)", "Noch 79,50 € bis Gold"]
    assert (row["receipt_id"], row["pos_id"]) == (member.value["receipt_id"], "POS7")
    assert row["customer_id"] == member.value["customer_id"]
    row = await db.fetchrow("SELECT * FROM receipt_messages WHERE event_id = $1", anonymous.value["event_id"])
    assert row is not None
    assert row["customer_id"] is None and json.loads(row["lines"]) == []


async def test_a_customer_snapshot_fills_both_customer_tables(sink: PostgresSink, db: asyncpg.Connection) -> None:
    customer = uid("C")
    await sink.write([snapshot(customer, 3, level="gold")])

    row = await db.fetchrow("SELECT * FROM customers WHERE customer_id = $1", customer)
    assert row is not None
    assert (row["client_state"], row["version"], row["event_id"]) == ("registered", 3, f"cs-{customer}-3")
    assert row["updated_at"] == datetime(2026, 11, 3, 12, 3, tzinfo=CET)
    assert [s["status"] for s in json.loads(row["statuses"])] == ["gold", "regular"]
    levels = {
        r["status_system"]: r
        for r in await db.fetch("SELECT * FROM customer_statuses WHERE customer_id = $1", customer)
    }
    assert set(levels) == {"monthly_amount", "visits"}
    assert levels["monthly_amount"]["status"] == "gold"
    assert levels["monthly_amount"]["counter"] == Decimal("103.50")
    assert levels["monthly_amount"]["valid_until"] == datetime(2026, 11, 30, 23, 59, 59, tzinfo=CET)
    assert levels["visits"]["counter"] == Decimal(3) and levels["visits"]["valid_until"] is None
    assert levels["visits"]["period"] == "2026-W45"


async def test_a_counter_below_zero_lands_as_it_is(sink: PostgresSink, db: asyncpg.Connection) -> None:
    # A return of last month's receipt before this month's first sale (README, "Returns").
    customer = uid("C")
    current = snapshot(customer, 5)
    current.value["statuses"][0]["counter"] = "-52.00"
    closed = status_change(customer, previous="gold", current="bronze", direction="downgrade", counter="-52.00")
    await sink.write([current, closed])

    stored = await db.fetchval(
        "SELECT counter FROM customer_statuses WHERE customer_id = $1 AND status_system = 'monthly_amount'", customer
    )
    assert stored == Decimal("-52.00")
    change = await db.fetchval("SELECT counter FROM status_changes WHERE event_id = $1", closed.value["event_id"])
    assert change == Decimal("-52.00")


async def test_the_same_batch_twice_is_stored_once(sink: PostgresSink, db: asyncpg.Connection) -> None:
    customer = uid("C")
    batch = [
        status_change(customer),
        offer_trigger(customer),
        receipt_message(customer),
        snapshot(customer, 1),
    ]
    await sink.write(batch)
    await sink.write(batch)
    await sink.write(batch[:2] + batch[:2])  # duplicates inside one batch too

    for record, table in zip(batch, EVENT_TABLES, strict=False):
        assert await count(db, table, [record.value["event_id"]]) == 1, table
    assert await db.fetchval("SELECT count(*) FROM customers WHERE customer_id = $1", customer) == 1
    assert await db.fetchval("SELECT count(*) FROM customer_statuses WHERE customer_id = $1", customer) == 2


async def test_an_older_snapshot_never_overwrites_a_newer_one(sink: PostgresSink, db: asyncpg.Connection) -> None:
    across, within = uid("C"), uid("C")

    async def stored() -> dict[str, tuple[int, str, str]]:
        rows = await db.fetch(
            "SELECT c.customer_id, c.version, c.event_id, s.status FROM customers c"
            " JOIN customer_statuses s ON s.customer_id = c.customer_id AND s.status_system = 'monthly_amount'"
            " WHERE c.customer_id = ANY($1::text[])",
            [across, within],
        )
        return {r["customer_id"]: (r["version"], r["event_id"], r["status"]) for r in rows}

    await sink.write([snapshot(across, 5, level="gold")])
    await sink.write([snapshot(across, 4, level="bronze")])  # replayed late
    await sink.write([snapshot(within, 9, level="gold"), snapshot(within, 2, level="bronze")])
    assert await stored() == {across: (5, f"cs-{across}-5", "gold"), within: (9, f"cs-{within}-9", "gold")}

    await sink.write([snapshot(across, 6, level="silver")])
    assert (await stored())[across] == (6, f"cs-{across}-6", "silver")


async def test_customers_per_level_counts_current_levels(server_dsn: str) -> None:
    async with fresh_database(server_dsn) as dsn:
        sink = PostgresSink(dsn)
        await sink.start()
        try:
            assert await sink.customers_per_level() == {}
            await sink.write(
                [
                    snapshot("A", 1, level="bronze"),
                    snapshot("B", 1, level="silver"),
                    snapshot("C", 1, level="silver"),
                    snapshot("D", 1, level="gold"),
                ]
            )
            await sink.write([snapshot("A", 2, level="gold"), snapshot("D", 2, level="gold", client_state="excluded")])
            assert await sink.customers_per_level() == {
                ("monthly_amount", "silver"): 2,
                ("monthly_amount", "gold"): 1,
                ("visits", "regular"): 3,
            }
        finally:
            await sink.stop()


async def test_a_server_restart_mid_stream_loses_and_doubles_nothing() -> None:
    with EmbeddedPostgres() as server:
        sink = PostgresSink(server.dsn("loyalty"), connect_timeout=2, command_timeout=5)
        await sink.start()
        try:
            customer = uid("C")
            before = [status_change(customer), offer_trigger(customer), snapshot(customer, 1)]
            during = [status_change(customer), receipt_message(customer), snapshot(customer, 2, level="gold")]
            await sink.write(before)
            assert await sink.healthy()

            server.stop()
            assert not await sink.healthy()
            with pytest.raises(SinkUnavailable):
                await sink.write(during)

            server.start()
            await sink.write(during)  # the runner's retry of the failed batch
            await sink.write(before)  # and a replay of one already stored
            assert await sink.healthy()

            conn = await asyncpg.connect(server.dsn("loyalty"))
            try:
                stored = await conn.fetch(
                    "SELECT event_id FROM status_changes UNION ALL SELECT event_id FROM offer_triggers"
                    " UNION ALL SELECT event_id FROM receipt_messages"
                )
                expected = [r.value["event_id"] for r in before + during if r.kind != CUSTOMER_STATUS]
                assert sorted(r["event_id"] for r in stored) == sorted(expected)
                assert await conn.fetchval("SELECT version FROM customers WHERE customer_id = $1", customer) == 2
            finally:
                await conn.close()
        finally:
            await sink.stop()


async def test_an_exclusion_is_never_undone_by_what_arrives_after_it(
    sink: PostgresSink, db: asyncpg.Connection
) -> None:
    customer = uid("C")
    r1, r2, r3, r4 = (f"{customer}-R{n}" for n in range(1, 5))

    def personal(version: int) -> SinkRecord:
        record = snapshot(customer, version, level="gold")
        record.value.update(birth_date="1990-11-25", registered_at="2025-05-01T10:00:00+00:00")
        return record

    def of_receipt(receipt_id: str) -> list[SinkRecord]:
        return [
            status_change(customer, caused_by=receipt_id),
            offer_trigger(customer, receipt_id=receipt_id, caused_by=receipt_id),
            receipt_message(customer, receipt_id=receipt_id, lines=[f"Your status: Gold, {receipt_id}"]),
        ]

    exclusion = snapshot(customer, 4, client_state="excluded")
    exclusion.value.update(statuses=[], erased_receipts=[r1, r2])
    before = [personal(2), personal(3), *of_receipt(r1)]
    await sink.write(before)
    # The same batch: events before the exclusion, then a stale snapshot and events made before
    # it that arrive behind it (another partition, or a re-delivery).
    await sink.write([*of_receipt(r2), exclusion, personal(3), *of_receipt(r3)])
    # A later batch: more of the same, and everything of the first batch again.
    await sink.write([personal(2), *of_receipt(r4), *before])

    row = await db.fetchrow("SELECT * FROM customers WHERE customer_id = $1", customer)
    assert row is not None
    assert (row["client_state"], row["version"], row["birth_date"], row["registered_at"]) == ("excluded", 4, None, None)
    assert json.loads(row["statuses"]) == []
    assert await db.fetchval("SELECT count(*) FROM customer_statuses WHERE customer_id = $1", customer) == 0
    assert await db.fetchval("SELECT count(*) FROM receipt_messages WHERE customer_id = $1", customer) == 0
    # Every status change and offer is kept (the programme's figures), and no column of any
    # table names one of the customer's receipts, a message of theirs or their profile.
    assert await db.fetchval("SELECT count(*) FROM status_changes WHERE customer_id = $1", customer) == 4
    assert await db.fetchval("SELECT count(*) FROM offer_triggers WHERE customer_id = $1", customer) == 4
    for table in ("customers", "customer_statuses", "status_changes", "offer_triggers", "receipt_messages"):
        leaks = await db.fetch(
            f"SELECT t::text AS row FROM {table} t WHERE strpos(t::text, $1) > 0"
            " AND t::text ~ '(-R[0-9]|1990-11-25|2025-05-01|Your status)'",
            customer,
        )
        assert [r["row"] for r in leaks] == [], table
