"""The PostgreSQL sink: output events and the customers' current state, via asyncpg.

A batch goes out as one statement per table (`INSERT ... SELECT FROM
json_to_recordset(...)`: the events' JSON as the topics hold it, parsed and typed by
PostgreSQL), all in one transaction, which the runner commits its offsets after. Event tables
are keyed by `event_id` (`ON CONFLICT DO NOTHING`), so replays store nothing
twice; `customers` keeps the snapshot with the highest `version`, so an old
snapshot replayed after a newer one never wins, in the same batch or a later one.
An exclusion erases the customer's personal data from every table, and an event
of the customer that arrives after it is stored erased (see `_EXCLUDED`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import orjson

from sinks.base import (
    CUSTOMER_STATUS,
    OFFER_TRIGGER,
    OUTSIDE_PROGRAMME_STATES,
    RECEIPT_MESSAGE,
    STATUS_CHANGE,
    Sink,
    SinkRecord,
    SinkRefused,
    SinkUnavailable,
)

__all__ = ["Migration", "PostgresSink", "apply_migrations", "database_name", "load_migrations", "with_database"]

logger = logging.getLogger(__name__)

# Any fixed 64-bit number, the same in every worker: serialises concurrent migration runs.
_MIGRATION_LOCK = 7_146_093_821_554_210_001
_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,  # asyncio.TimeoutError is the same class since 3.11
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # A connection left mid-operation (a query cut off by a timeout while the server was going
    # away) refuses the next one with "another operation is in progress": the connection is
    # broken, not the batch; it is terminated (below) and the write retried on a fresh one.
    asyncpg.InternalClientError,
)


#: The sink's statements look a batch's customers up by key in tables that live in memory.
#: PostgreSQL's default cost of reading a random page (4, four sequential reads: spinning disks)
#: made it scan `customers` and `customer_statuses` whole for every batch instead, a cost that
#: grows with the tables; at 1.1 the planner looks the keys up.
_SESSION = {"random_page_cost": "1.1"}


def _connection_problem(exc: BaseException) -> bool:
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    # asyncpg reports a connection or pool closed under it as a plain InterfaceError.
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


def with_database(dsn: str, database: str) -> str:
    """The same DSN pointing at another database."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


def database_name(dsn: str) -> str | None:
    return unquote(urlsplit(dsn).path.lstrip("/")) or None


def _where(dsn: str) -> str:
    """host:port/database, without credentials, for messages and logs."""
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}/{database_name(dsn) or ''}"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The package's `migrations/NNNN_name.sql` files, in version order."""
    found: list[Migration] = []
    for entry in (resources.files("sinks") / "migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_FILE.match(entry.name)
        if match is None:
            raise ValueError(f"sinks/migrations/{entry.name}: name must look like 0001_description.sql")
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"sinks/migrations: two files share a version number: {versions}")
    return found


async def apply_migrations(conn: asyncpg.Connection, migrations: Sequence[Migration] | None = None) -> list[int]:
    """Applies the migrations not yet recorded in `schema_migrations`, all in one transaction.

    Concurrent callers queue on an advisory lock, so the second one finds
    everything applied. Returns the versions applied by this call.
    """
    pending = list(load_migrations() if migrations is None else migrations)
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in pending:
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", migration.version, migration.name
            )
            applied_now.append(migration.version)
    unknown = done - {m.version for m in pending}
    if unknown:
        logger.warning("database has migrations this code does not know: %s (a newer version ran here)", unknown)
    if applied_now:
        logger.info("applied PostgreSQL migrations %s", applied_now)
    return applied_now


def _json_array(records: Iterable[SinkRecord]) -> str:
    """The records' values as one JSON array, from their bytes as read where the runner kept them."""
    return (b"[" + b",".join(r.raw if r.raw is not None else orjson.dumps(r.value) for r in records) + b"]").decode()


#: Each statement below writes one table for the whole batch, which it reads as one JSON array
#: ($1; PostgreSQL parses it, and casts each field to its column's type, refusing what does not
#: fit: a timestamp without an offset (`loyalty_instant`), a counter that is not a number, a NUL
#: in a text). The event tables' statements also erase what an exclusion in this batch erases
#: (the excluded customers, $2) and store erased an event of a customer already excluded:
#: `customers` says so, written first in the same transaction. Such an event was made before
#: the exclusion and arrived after it (from another partition, or again); an exclusion is final,
#: no event brings a customer back. Its receipt message is not stored at all.
_EXCLUDED = "SELECT customer_id FROM customers WHERE client_state = 'excluded'"

_INSERT_STATUS_CHANGES = f"""
WITH erased AS (
    UPDATE status_changes SET caused_by = 'erased'
    WHERE customer_id = ANY($2::text[]) AND caused_by <> 'erased'
)
INSERT INTO status_changes (event_id, customer_id, status_system, previous, current, direction, reason,
                            effective_from, valid_until, counter, period, caused_by, occurred_at, operator, comment)
SELECT t.event_id, t.customer_id, t.status_system, t.previous, t.current, t.direction, t.reason,
       loyalty_instant(t.effective_from), loyalty_instant(t.valid_until), t.counter, t.period,
       CASE WHEN x.customer_id IS NULL THEN t.caused_by ELSE 'erased' END, loyalty_instant(t.occurred_at),
       t.operator, t.comment
FROM json_to_recordset($1::json)
     AS t(event_id text, customer_id text, status_system text, previous text, current text, direction text,
          reason text, effective_from text, valid_until text, counter numeric, period text, caused_by text,
          occurred_at text, operator text, comment text)
LEFT JOIN ({_EXCLUDED}) AS x ON x.customer_id = t.customer_id
ON CONFLICT (event_id) DO NOTHING
"""

_INSERT_OFFER_TRIGGERS = f"""
WITH erased AS (
    UPDATE offer_triggers SET receipt_id = NULL, caused_by = 'erased'
    WHERE customer_id = ANY($2::text[]) AND caused_by <> 'erased'
)
INSERT INTO offer_triggers (event_id, customer_id, offer_id, action, points, percent, amount, expires_at,
                            receipt_id, caused_by, occurred_at)
SELECT t.event_id, t.customer_id, t.offer_id, t.action, t.points, t.percent, t.amount,
       loyalty_instant(t.expires_at), CASE WHEN x.customer_id IS NULL THEN t.receipt_id END,
       CASE WHEN x.customer_id IS NULL THEN t.caused_by ELSE 'erased' END, loyalty_instant(t.occurred_at)
FROM json_to_recordset($1::json)
     AS t(event_id text, customer_id text, offer_id text, action text, points integer, percent numeric,
          amount numeric, expires_at text, receipt_id text, caused_by text, occurred_at text)
LEFT JOIN ({_EXCLUDED}) AS x ON x.customer_id = t.customer_id
ON CONFLICT (event_id) DO NOTHING
"""

_INSERT_RECEIPT_MESSAGES = f"""
WITH erased AS (
    DELETE FROM receipt_messages WHERE customer_id = ANY($2::text[])
)
INSERT INTO receipt_messages (event_id, receipt_id, pos_id, customer_id, lines, occurred_at)
SELECT t.event_id, t.receipt_id, t.pos_id, t.customer_id, t.lines, loyalty_instant(t.occurred_at)
FROM json_to_recordset($1::json)
     AS t(event_id text, receipt_id text, pos_id text, customer_id text, lines jsonb, occurred_at text)
WHERE t.customer_id IS NULL OR t.customer_id NOT IN ({_EXCLUDED})
ON CONFLICT (event_id) DO NOTHING
"""

#: Only a snapshot with a higher version replaces the stored one ($1 holds one per customer: an
#: upsert may touch a row once); the customers it replaced are returned, with their state.
_UPSERT_CUSTOMERS = """
INSERT INTO customers AS c (customer_id, client_state, statuses, version, event_id, updated_at,
                            birth_date, registered_at)
SELECT t.customer_id, t.client_state, t.statuses, t.version, t.event_id, loyalty_instant(t.occurred_at),
       NULLIF(t.birth_date, '')::date, loyalty_instant(t.registered_at)
FROM json_to_recordset($1::json)
     AS t(customer_id text, client_state text, statuses jsonb, version bigint, event_id text, occurred_at text,
          birth_date text, registered_at text)
ON CONFLICT (customer_id) DO UPDATE
SET client_state = EXCLUDED.client_state, statuses = EXCLUDED.statuses, version = EXCLUDED.version,
    event_id = EXCLUDED.event_id, updated_at = EXCLUDED.updated_at,
    birth_date = EXCLUDED.birth_date, registered_at = EXCLUDED.registered_at
WHERE c.version < EXCLUDED.version
RETURNING customer_id, client_state
"""

#: The per-system rows of the customers whose snapshot was replaced ($2): their new rows ($1, none for
#: a customer outside the programme) upserted, and any other row of theirs deleted.
_REPLACE_CUSTOMER_STATUSES = """
WITH fresh AS (
    SELECT t.customer_id, t.status_system, t.status, loyalty_instant(t.valid_until) AS valid_until, t.period,
           t.counter
    FROM json_to_recordset($1::json)
         AS t(customer_id text, status_system text, status text, valid_until text, period text, counter numeric)
), gone AS (
    DELETE FROM customer_statuses s
    WHERE s.customer_id = ANY($2::text[])
      AND NOT EXISTS (SELECT 1 FROM fresh f WHERE f.customer_id = s.customer_id AND f.status_system = s.status_system)
)
INSERT INTO customer_statuses AS s (customer_id, status_system, status, valid_until, period, counter)
SELECT customer_id, status_system, status, valid_until, period, counter FROM fresh
ON CONFLICT (customer_id, status_system) DO UPDATE
SET status = EXCLUDED.status, valid_until = EXCLUDED.valid_until, period = EXCLUDED.period,
    counter = EXCLUDED.counter
"""


def _levels(snapshots: Iterable[dict[str, Any]]) -> str:
    """The per-system rows of the snapshots of customers in the programme, as one JSON array."""
    rows = [
        {
            "customer_id": snapshot["customer_id"],
            "status_system": status["status_system"],
            "status": status["status"],
            "valid_until": status.get("valid_until"),
            "period": status.get("period"),
            "counter": status.get("counter"),
        }
        for snapshot in snapshots
        if snapshot["client_state"] not in OUTSIDE_PROGRAMME_STATES
        for status in snapshot["statuses"]
    ]
    return orjson.dumps(rows).decode()


def _newest_snapshots(records: Iterable[SinkRecord]) -> list[SinkRecord]:
    """One snapshot per customer, the highest version."""
    newest: dict[str, SinkRecord] = {}
    for record in records:
        customer_id = record.value["customer_id"]
        held = newest.get(customer_id)
        if held is None or int(record.value["version"]) > int(held.value["version"]):
            newest[customer_id] = record
    return list(newest.values())


class PostgresSink(Sink):
    """Writes every output kind to PostgreSQL; see the module docstring for the idempotency rules."""

    name = "postgres"
    kinds = frozenset({STATUS_CHANGE, OFFER_TRIGGER, RECEIPT_MESSAGE, CUSTOMER_STATUS})

    def __init__(
        self,
        dsn: str,
        *,
        pool_min_size: int = 1,
        pool_max_size: int = 4,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
        health_timeout: float = 2.0,
        retry_after: float = 1.0,
        maintenance_database: str = "postgres",
    ) -> None:
        self._dsn = dsn
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._health_timeout = health_timeout
        self._retry_after = retry_after
        self._maintenance_database = maintenance_database
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        """Creates the database if missing, opens the pool and applies the migrations.

        Raises `SinkUnavailable` when PostgreSQL cannot be reached; calling it again retries.
        """
        if self._pool is not None:
            return
        async with self._connection_errors("connect to"):
            try:
                pool = await self._open_pool()
            except asyncpg.InvalidCatalogNameError:
                await self._create_database()
                pool = await self._open_pool()
        try:
            async with self._connection_errors("migrate"), pool.acquire(timeout=self._connect_timeout) as conn:
                await apply_migrations(conn)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def write(self, batch: Sequence[SinkRecord]) -> None:
        by_kind: dict[str, list[SinkRecord]] = {kind: [] for kind in self.kinds}
        for record in batch:
            if record.kind not in by_kind:
                raise ValueError(f"PostgresSink got a record of unknown kind {record.kind!r}")
            by_kind[record.kind].append(record)
        if not batch:
            return
        pool = self._require_pool()
        async with self._connection_errors("write to"):
            try:
                await self._write(pool, by_kind)
            except asyncpg.PostgresError as exc:
                if _connection_problem(exc):
                    raise
                # The server answered: it cannot store a value of this batch (a NUL in a text, ...).
                raise SinkRefused(f"PostgreSQL refused the batch: {type(exc).__name__}: {exc}") from exc
            except (KeyError, ValueError, TypeError, ArithmeticError) as exc:
                raise SinkRefused(f"not a well-formed event: {type(exc).__name__}: {exc}") from exc

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self._command_timeout)
        except TimeoutError:
            logger.warning("PostgreSQL pool did not close in %.0fs; terminating its connections", self._command_timeout)
            pool.terminate()

    async def healthy(self) -> bool:
        pool = self._pool
        if pool is None:
            return False
        try:
            async with asyncio.timeout(self._health_timeout):
                async with pool.acquire() as conn:
                    return bool(await conn.fetchval("SELECT 1") == 1)
        except Exception as exc:
            if _connection_problem(exc):
                return False
            raise

    async def customers_per_level(self) -> dict[tuple[str, str], int]:
        """(status system, level) -> how many customers in the programme hold that level now."""
        pool = self._require_pool()
        async with self._connection_errors("read from"), pool.acquire(timeout=self._connect_timeout) as conn:
            rows = await conn.fetch(
                "SELECT status_system, status, count(*) AS customers FROM customer_statuses"
                " GROUP BY status_system, status"
            )
        return {(row["status_system"], row["status"]): int(row["customers"]) for row in rows}

    async def _write(self, pool: asyncpg.Pool, by_kind: dict[str, list[SinkRecord]]) -> None:
        snapshots = _newest_snapshots(by_kind[CUSTOMER_STATUS])
        async with pool.acquire(timeout=self._connect_timeout) as conn:
            try:
                await self._write_batch(conn, by_kind, snapshots)
            except asyncpg.InternalClientError:
                conn.terminate()  # the pool opens a new one; the runner retries the batch
                raise

    @staticmethod
    async def _write_batch(
        conn: asyncpg.Connection, by_kind: dict[str, list[SinkRecord]], snapshots: list[SinkRecord]
    ) -> None:
        """One transaction, one statement per table: the customers first, so that the events after
        them see who is excluded."""
        # Everything but the per-system rows is made before the transaction opens, so that its
        # statements follow each other with nothing for the server to wait for in between.
        customers = _json_array(snapshots)
        events = [
            (statement, _json_array(by_kind[kind]), bool(by_kind[kind]))
            for kind, statement in (
                (STATUS_CHANGE, _INSERT_STATUS_CHANGES),
                (OFFER_TRIGGER, _INSERT_OFFER_TRIGGERS),
                (RECEIPT_MESSAGE, _INSERT_RECEIPT_MESSAGES),
            )
        ]
        excluded: list[str] = []
        async with conn.transaction():
            if snapshots:
                changed = await conn.fetch(_UPSERT_CUSTOMERS, customers)
                if changed:
                    replaced = [row["customer_id"] for row in changed]
                    newest = {record.value["customer_id"]: record.value for record in snapshots}
                    await conn.execute(_REPLACE_CUSTOMER_STATUSES, _levels(newest[c] for c in replaced), replaced)
                    excluded = [row["customer_id"] for row in changed if row["client_state"] == "excluded"]
            for statement, rows, any_rows in events:
                if any_rows or excluded:
                    await conn.execute(statement, rows, excluded)

    def _require_pool(self) -> asyncpg.Pool:
        pool = self._pool
        if pool is None or pool.is_closing():
            raise SinkUnavailable(f"PostgreSQL sink for {_where(self._dsn)} is not started", self._retry_after)
        return pool

    async def _open_pool(self) -> asyncpg.Pool:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            self._dsn,
            min_size=self._pool_min_size,
            max_size=self._pool_max_size,
            timeout=self._connect_timeout,
            command_timeout=self._command_timeout,
            server_settings=_SESSION,
        )
        return pool

    async def _create_database(self) -> None:
        database = database_name(self._dsn)
        if database is None:
            raise SinkUnavailable(f"PostgreSQL at {_where(self._dsn)}: no database named in the DSN")

        maintenance = with_database(self._dsn, self._maintenance_database)
        conn = await asyncpg.connect(maintenance, timeout=self._connect_timeout)
        try:
            await conn.execute(f"CREATE DATABASE {_quote_ident(database)}")
            logger.info("created PostgreSQL database %s", database)
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            pass  # another worker created it first
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def _connection_errors(self, doing: str) -> AsyncIterator[None]:
        """Turns a lost or refused connection into `SinkUnavailable`; anything else is a bug and propagates."""
        try:
            yield
        except Exception as exc:
            if not _connection_problem(exc):
                raise
            raise SinkUnavailable(
                f"cannot {doing} PostgreSQL at {_where(self._dsn)} ({type(exc).__name__}: {exc}); "
                "is the server running and DATABASE_URL right?",
                self._retry_after,
            ) from exc
