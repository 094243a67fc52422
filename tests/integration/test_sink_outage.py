"""A sink stopped mid-stream: its runner retries from a bounded batch, the other sink and the
topics go on, and when it is back it catches up; nothing produced meanwhile is lost or doubled."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import asyncpg
import pytest
import redis.asyncio as aioredis

from models import events
from sinks.base import RECEIPT_MESSAGE, MemorySink, SinkRecord, SinkRefused
from sinks.metrics import SinkMetrics
from sinks.postgres import PostgresSink, with_database
from sinks.redis import RedisSink
from sinks.runner import SinkRunner
from streams.local.broker import EmbeddedBroker
from streams.local.postgres import EmbeddedPostgres
from streams.local.probe import OutputReader, produce
from streams.local.redis import EmbeddedRedis

pytestmark = pytest.mark.integration


@pytest.fixture
def private_postgres() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def messages(prefix: str, numbers: range) -> list[tuple[bytes | None, bytes]]:
    out = []
    for n in numbers:
        message = events.receipt_message(
            receipt_id=f"{prefix}-{n:04d}",
            pos_id=f"POS{n % 7}",
            customer_id=f"C-{n % 50}",
            lines=[f"line for receipt {n}"],
            occurred_at=datetime(2026, 11, 3, 12, tzinfo=UTC),
        )
        out.append((message.key.encode() if message.key else None, json.dumps(message.value).encode()))
    return out


async def until(probe: object, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not await probe():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_stopped_sinks_catch_up_and_lose_nothing(
    broker: EmbeddedBroker, private_postgres: EmbeddedPostgres, private_redis: EmbeddedRedis
) -> None:
    topic = f"outage-{uuid.uuid4().hex[:6]}-receipt-messages"
    metrics = SinkMetrics()
    postgres = PostgresSink(private_postgres.dsn("loyalty"))
    redis_sink = RedisSink(private_redis.url, prefix="outage:")
    untouched = MemorySink()
    runners = [
        SinkRunner(
            sink,
            bootstrap=broker.bootstrap,
            group_id=f"{topic}-{sink.name}",
            topics={topic: RECEIPT_MESSAGE},
            metrics=metrics,
            max_batch=50,
        )
        for sink in (postgres, redis_sink, untouched)
    ]
    tasks = [asyncio.create_task(runner.run()) for runner in runners]
    redis = aioredis.from_url(private_redis.url)
    try:
        await produce(broker.bootstrap, topic, messages("A", range(200)))

        async def stored() -> int:
            try:
                connection = await asyncpg.connect(private_postgres.dsn("loyalty"))
            except (OSError, asyncpg.PostgresError):
                return -1  # not created yet, or down
            try:
                return int(await connection.fetchval("SELECT count(*) FROM receipt_messages"))
            except asyncpg.PostgresError:
                return -1  # the sink has created the database but not yet its tables
            finally:
                await connection.close()

        async def redis_keys(prefix: str) -> int:
            try:
                return len([key async for key in redis.scan_iter(f"outage:receipt-message:{prefix}-*", count=1000)])
            except (aioredis.ConnectionError, OSError):
                return -1  # down, or our pooled connection died with it

        await until(lambda: _eq(stored(), 200), 60, "batch A in PostgreSQL")
        await until(lambda: _eq(redis_keys("A"), 200), 60, "batch A in Redis")

        private_postgres.stop()
        private_redis.stop()
        await produce(broker.bootstrap, topic, messages("B", range(300)))
        await until(
            lambda: _positive(_sample(metrics, "loyalty_sink_retries_total", "postgres")), 30, "postgres retries"
        )
        await until(lambda: _positive(_sample(metrics, "loyalty_sink_retries_total", "redis")), 30, "redis retries")
        # The batch in hand is the bounded buffer; the rest waits in the topic.
        assert 0 < _sample(metrics, "loyalty_sink_buffer_depth", "postgres") <= 50
        assert _sample(metrics, "loyalty_sink_up", "postgres") == 0
        # What the stopped sinks have not written is in sight, and its age grows.
        postgres_runner, redis_runner = runners[0], runners[1]
        # (Apache Kafka reports the 300 exactly; the embedded broker's end offsets can fall short:
        # README, "The embedded broker and its quirks".)
        for runner in (postgres_runner, redis_runner):
            await until(lambda r=runner: _true(0 < r.progress().lag[topic] <= 300), 30, f"{runner.sink.name}'s lag")
        first_age = postgres_runner.progress().oldest_unwritten_seconds
        assert first_age > 0
        await asyncio.sleep(1.5)
        assert postgres_runner.progress().oldest_unwritten_seconds >= first_age + 1.0
        assert postgres_runner.progress().up is False
        lag_gauge = metrics.registry.get_sample_value("loyalty_sink_consumer_lag", {"sink": "redis", "topic": topic})
        assert lag_gauge == redis_runner.progress().lag[topic]
        assert _sample(metrics, "loyalty_sink_oldest_unwritten_seconds", "redis") > 0
        # The other sink went on.
        await until(lambda: _true(len(untouched.records) == 500), 30, "the memory sink to get everything")

        private_postgres.start()
        private_redis.start()
        postgres_catch_up = await until(lambda: _eq(stored(), 500), 90, "batch B in PostgreSQL")
        redis_catch_up = await until(lambda: _eq(redis_keys("B"), 300), 90, "batch B in Redis")
        print(f"catch-up after restart: postgres {postgres_catch_up:.1f}s, redis {redis_catch_up:.1f}s")
        for runner in (postgres_runner, redis_runner):
            await until(lambda r=runner: _true(r.progress().lag[topic] == 0), 30, f"{runner.sink.name} caught up")
            assert runner.progress().oldest_unwritten_seconds == 0.0
        assert _sample(metrics, "loyalty_sink_oldest_unwritten_seconds", "postgres") == 0.0

        # Replaying everything stores nothing twice.
        await produce(broker.bootstrap, topic, messages("A", range(200)) + messages("B", range(300)))
        await until(lambda: _true(len(untouched.records) == 1000), 30, "the replay to pass the memory sink")
        await until(lambda: _true(runners[0].written >= 1000), 60, "the replay to reach PostgreSQL")
        assert await stored() == 500
        assert _sample(metrics, "loyalty_sink_up", "postgres") == 1
    finally:
        for runner in runners:
            await runner.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()


def _sample(metrics: SinkMetrics, name: str, sink: str) -> float:
    value = metrics.registry.get_sample_value(name, {"sink": sink})
    return value or 0.0


async def _eq(awaitable: object, expected: int) -> bool:
    return await awaitable == expected  # type: ignore[misc]


async def _positive(value: float) -> bool:
    return value > 0


async def _true(value: bool) -> bool:
    return value


class SurprisedSink(MemorySink):
    """Fails its first write with an error that is not a known outage (as asyncpg's
    "another operation is in progress" once did, which stopped the whole worker)."""

    name = "surprised"

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def write(self, batch: Sequence[SinkRecord]) -> None:
        if self.failures == 0:
            self.failures += 1
            raise RuntimeError("a failure mode nobody planned for")
        await super().write(batch)


async def test_an_unexpected_sink_error_is_retried_not_fatal(broker: EmbeddedBroker) -> None:
    topic = f"surprise-{uuid.uuid4().hex[:6]}-receipt-messages"
    metrics = SinkMetrics()
    sink = SurprisedSink()
    runner = SinkRunner(
        sink, bootstrap=broker.bootstrap, group_id=f"{topic}-g", topics={topic: RECEIPT_MESSAGE}, metrics=metrics
    )
    task = asyncio.create_task(runner.run())
    try:
        await produce(broker.bootstrap, topic, messages("S", range(20)))
        await until(lambda: _true(len(sink.records) == 20), 60, "the retried batch")
        assert not task.done()
        assert sink.failures == 1
        assert _sample(metrics, "loyalty_sink_write_errors_total", "surprised") == 1
    finally:
        await runner.stop()
        await asyncio.gather(task, return_exceptions=True)


class PickySink(MemorySink):
    """Refuses any batch holding a receipt message whose id has "bad" in it, as a store refuses a
    value it cannot hold; or fails like a bug, while up, with `surprise`."""

    name = "picky"

    def __init__(self, surprise: bool = False) -> None:
        super().__init__()
        self.surprise = surprise
        self.attempts = 0

    async def write(self, batch: Sequence[SinkRecord]) -> None:
        self.attempts += 1
        if any("bad" in r.value["receipt_id"] for r in batch):
            if self.surprise:
                raise RuntimeError("a value this code cannot handle")
            raise SinkRefused("value not storable")
        await super().write(batch)


@pytest.mark.parametrize("surprise", [False, True])
async def test_records_a_sink_refuses_are_set_aside_and_the_rest_is_written_in_order(
    broker: EmbeddedBroker, surprise: bool
) -> None:
    topic = f"picky-{uuid.uuid4().hex[:6]}-receipt-messages"
    dead_letters = f"{topic}-dead-letters"
    metrics = SinkMetrics()
    sink = PickySink(surprise)
    runner = SinkRunner(
        sink,
        bootstrap=broker.bootstrap,
        group_id=f"{topic}-g",
        topics={topic: RECEIPT_MESSAGE},
        metrics=metrics,
        dead_letters=dead_letters,
    )
    good = messages("G", range(300))
    bad = messages("bad", range(3))
    records = good[:100] + bad[:1] + good[100:200] + bad[1:] + good[200:]
    task = asyncio.create_task(runner.run())
    try:
        await produce(broker.bootstrap, topic, records)
        await produce(broker.bootstrap, topic, [(None, b"not json"), (b"\xff", b"[1, 2]")])
        await until(lambda: _true(runner.set_aside == 5), 60, "the refused records set aside")
        await until(lambda: _true(len(sink.records) == 300), 60, "every good record written")
        written = [r.value["receipt_id"] for r in sink.records]
        assert sorted(written) == [f"G-{n:04d}" for n in range(300)]
        for pos in {r.key for r in sink.records}:  # each till's messages in the order they were sent
            of_pos = [r.value["receipt_id"] for r in sink.records if r.key == pos]
            assert of_pos == sorted(of_pos)
        assert _sample(metrics, "loyalty_sink_dead_letters_total", "picky") == 5
        assert not task.done()
        reader = await OutputReader(broker.bootstrap, [dead_letters]).start()
        try:
            await reader.wait_for(lambda: len(reader.records[dead_letters]) >= 5, 30, "the dead letters")
        finally:
            await reader.stop()
        values = reader.records[dead_letters]
        assert len(values) == 5
        refused = [v for v in values if "refused it" in v["error"]]
        assert sorted(json.loads(v["value"])["receipt_id"] for v in refused) == ["bad-0000", "bad-0001", "bad-0002"]
        assert all(v["topic"] == topic and v["offset"] >= 0 for v in values)
        reason = "a value this code cannot handle" if surprise else "value not storable"
        assert all(reason in v["error"] for v in refused)
        malformed = [v for v in values if "not an output event" in v["error"]]
        assert sorted((v["value"], v["value_encoding"], v["key"]) for v in malformed) == [
            ("[1, 2]", "text", "/w=="),
            ("not json", "text", None),
        ]
    finally:
        await runner.stop()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_nul_postgresql_refuses_is_set_aside_and_the_batch_around_it_stored(
    broker: EmbeddedBroker, postgres_dsn: str
) -> None:
    topic = f"nul-{uuid.uuid4().hex[:6]}-receipt-messages"
    database = f"loyalty_test_{uuid.uuid4().hex[:10]}"
    dsn = with_database(postgres_dsn, database)
    metrics = SinkMetrics()
    runner = SinkRunner(
        PostgresSink(dsn),
        bootstrap=broker.bootstrap,
        group_id=f"{topic}-g",
        topics={topic: RECEIPT_MESSAGE},
        metrics=metrics,
        dead_letters=f"{topic}-dead-letters",
    )
    records = messages("P", range(50))
    nul = events.receipt_message(
        receipt_id="P-\x00-NUL",
        pos_id="POS1",
        customer_id="C-1",
        lines=["x"],
        occurred_at=datetime(2026, 11, 3, 12, tzinfo=UTC),
    )
    records.insert(25, (b"POS1", json.dumps(nul.value).encode()))
    task = asyncio.create_task(runner.run())
    try:
        await produce(broker.bootstrap, topic, records)
        await until(lambda: _true(runner.set_aside == 1), 60, "the NUL set aside")

        async def stored() -> int:
            connection = await asyncpg.connect(dsn)
            try:
                return int(await connection.fetchval("SELECT count(*) FROM receipt_messages"))
            finally:
                await connection.close()

        await until(lambda: _eq(stored(), 50), 60, "the other 50 stored")
        assert _sample(metrics, "loyalty_sink_up", "postgres") == 1
    finally:
        await runner.stop()
        await asyncio.gather(task, return_exceptions=True)
        connection = await asyncpg.connect(with_database(postgres_dsn, "postgres"))
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await connection.close()
