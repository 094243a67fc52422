"""The sinks' figures: each sink draining a backlog, and how soon they hold everything at 1,000 receipts/s.

    python -m benchmarks.sinks [--events 200000] [--rate 1000] [--seconds 30] [--also-rate 500]
                               [--only backlog,completion]

1. **backlog**: at least `--events` output events, made by the pure core from a generated
   October and November of POS traffic (receipt messages, snapshots as the worker makes them,
   status changes at the month's close, offers), are produced into the four output topics
   of a fresh embedded broker. Then each sink alone, and both together as `loyalty sinks`
   runs them, drain it through their runners into a fresh database and key prefix: events
   per second from the first batch in hand to the last one written (the consumer group's
   join is not counted), and the stores checked against what was produced.
2. **completion**: a worker without sinks (`LOYALTY_SINKS=`) and a `loyalty sinks` process
   on a fresh broker, receipts sent at `--rate` a second for `--seconds`: the receipt ->
   message latency, and how long after the last receipt message the sinks hold everything
   (both consumer groups' committed offsets at the topics' ends; a runner commits only
   after its store has the batch). Again at `--also-rate` when given, a rate the worker
   keeps up with where it does not keep up with `--rate`.

Prints the figures and returns them (`make bench` writes them with its own); asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks.harness import Answers, Namespace, Stack, Workload, cpu_seconds, fresh_broker, paced, percentiles, stack
from config.loading import load_config
from config.settings import Settings
from models.engine import apply_receipt
from models.errors import InvalidInput
from models.events import OutputKind
from models.inputs import parse_receipt
from models.schema import LoyaltyConfig
from models.state import CustomerState
from sinks.base import Sink, SinkRecord
from sinks.metrics import SinkMetrics
from sinks.service import Sinks, SinkSettings
from streams.local.generator import ReceiptFactory, TrafficShape
from streams.local.probe import SinksProcess, wait_for_topics
from streams.worker import sink_settings

BERLIN = ZoneInfo("Europe/Berlin")
#: The topics' partitions, as the workers create them by default.
PARTITIONS = Settings.model_fields["loyalty_partitions"].default
TOPIC_OF = {
    OutputKind.STATUS_CHANGE: "status-changes",
    OutputKind.OFFER_TRIGGER: "offer-triggers",
    OutputKind.RECEIPT_MESSAGE: "receipt-messages",
    OutputKind.CUSTOMER_STATUS: "customer-status",
}


@dataclass
class Backlog:
    """Output events by topic (short name), each a (key, value) as the worker produces it."""

    records: dict[str, list[tuple[bytes | None, bytes]]] = field(default_factory=dict)
    receipts: int = 0

    @property
    def events(self) -> int:
        return sum(len(r) for r in self.records.values())

    def distinct(self, topic: str, field_name: str = "event_id") -> set[str]:
        return {orjson.loads(value)[field_name] for _, value in self.records[topic]}

    def newest_versions(self) -> dict[str, int]:
        newest: dict[str, int] = {}
        for _, value in self.records["customer-status"]:
            snapshot = orjson.loads(value)
            newest[snapshot["customer_id"]] = max(newest.get(snapshot["customer_id"], 0), snapshot["version"])
        return newest


def make_backlog(config: LoyaltyConfig, events: int, customers: int, seed: int = 17) -> Backlog:
    """At least `events` output events from the core over October and November's receipts, in
    the order the worker would send them (one snapshot per receipt: the worker's batches of
    one, the most a sink is given)."""
    factory = ReceiptFactory(TrafficShape(customers=customers, seed=seed))
    start, span = datetime(2026, 10, 1, tzinfo=BERLIN), timedelta(days=60)
    now = datetime(2026, 12, 1, tzinfo=BERLIN)
    expected = events // 2  # about two events a receipt; the clock sweeps the two months anyway
    backlog = Backlog({topic: [] for topic in TOPIC_OF.values()})
    states: dict[str, CustomerState] = {}
    while backlog.events < events:
        at = start + span * min(backlog.receipts / expected, 1.0)
        receipt = parse_receipt(json.dumps(factory.next(at.replace(microsecond=0))), config, now)
        backlog.receipts += 1
        customer = receipt.customer_id
        try:
            result = apply_receipt(states.get(customer) if customer else None, receipt, config)
        except InvalidInput:
            continue
        if customer is not None and result.state is not None:
            states[customer] = result.state
        for output in result.outputs:
            key = output.key.encode() if output.key is not None else None
            backlog.records[TOPIC_OF[output.kind]].append((key, orjson.dumps(output.value)))
    return backlog


async def create_topics(bootstrap: str, names: Sequence[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1) for name in names])
    finally:
        await admin.close()
    await wait_for_topics(bootstrap, list(names), timeout=60)


async def produce_backlog(bootstrap: str, prefix: str, backlog: Backlog) -> None:
    await create_topics(bootstrap, [prefix + topic for topic in backlog.records])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, acks=1)
    await producer.start()
    try:
        for topic, records in backlog.records.items():
            for key, value in records:
                await producer.send(prefix + topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


class Timed(Sink):
    """A sink as it is, with when its first write began."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.name, self.kinds = inner.name, inner.kinds
        self.first_write: float | None = None

    async def start(self) -> None:
        await self.inner.start()

    async def write(self, batch: Sequence[SinkRecord]) -> None:
        if self.first_write is None:
            self.first_write = time.perf_counter()
        await self.inner.write(batch)

    async def flush(self) -> None:
        await self.inner.flush()

    async def stop(self) -> None:
        await self.inner.stop()

    async def healthy(self) -> bool:
        return await self.inner.healthy()


@dataclass
class Stores:
    """A fresh PostgreSQL database and Redis key prefix for one drain."""

    stack: Stack
    name: str = field(default_factory=lambda: f"sb{uuid.uuid4().hex[:6]}")

    @property
    def database(self) -> str:
        return f"{self.stack.postgres_dsn.rsplit('/', 1)[0]}/bench_{self.name}"

    @property
    def prefix(self) -> str:
        return f"{self.name}-"  # what Namespace.drop deletes

    async def drop(self) -> None:
        await Namespace(self.stack, "", name=self.name).drop()

    async def backend_cpu(self) -> float:
        """CPU seconds the server's processes for this database have used (the sink's pool)."""
        connection = await asyncpg.connect(self.database)
        try:
            pids = await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await connection.close()
        total = 0.0
        for row in pids:
            with contextlib.suppress(OSError):  # a server elsewhere: not measured
                total += cpu_seconds(row["pid"])
        return total

    async def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            connection = await asyncpg.connect(self.database)
            try:
                for table in ("status_changes", "offer_triggers", "receipt_messages", "customers"):
                    found[f"postgres.{table}"] = int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
            finally:
                await connection.close()
        redis = aioredis.from_url(self.stack.redis_url)
        try:
            for kind in ("customer", "receipt-message"):
                keys = [k async for k in redis.scan_iter(f"{self.prefix}{kind}:*", count=5000)]
                found[f"redis.{kind}"] = len(keys)
        finally:
            await redis.aclose()
        return found


def expected_counts(backlog: Backlog, names: Sequence[str]) -> dict[str, int]:
    expected: dict[str, int] = {}
    if "postgres" in names:
        expected |= {
            "postgres.status_changes": len(backlog.distinct("status-changes")),
            "postgres.offer_triggers": len(backlog.distinct("offer-triggers")),
            "postgres.receipt_messages": len(backlog.distinct("receipt-messages")),
            "postgres.customers": len(backlog.newest_versions()),
        }
    if "redis" in names:
        expected |= {
            "redis.customer": len(backlog.newest_versions()),
            "redis.receipt-message": len(backlog.distinct("receipt-messages", "receipt_id")),
        }
    return expected


async def drain(stack: Stack, prefix: str, backlog: Backlog, names: Sequence[str]) -> dict[str, Any]:
    """The backlog through `names`' runners (one `Sinks`, as `loyalty sinks` runs them), timed."""
    stores = Stores(stack)
    settings = Settings()
    setup = SinkSettings(
        bootstrap=stack.bootstrap,
        app_id=f"{stores.name}-app",
        topics=sink_settings(settings.model_copy(update={"loyalty_topic_prefix": prefix}), load_config()).topics,
        dead_letters=prefix + "dead-letters",
        redis_url=stack.redis_url,
        redis_prefix=stores.prefix,
        database_url=stores.database,
        fetch_max_wait_ms=settings.kafka_sink_fetch_max_wait_ms,
        session_timeout_ms=int(settings.kafka_session_timeout * 1000),
        max_batch=settings.loyalty_sink_max_batch,
    )
    sinks = Sinks(names, setup, SinkMetrics())
    timed = {name: Timed(sink) for name, sink in sinks.sinks.items()}
    for name, runner in sinks.runners.items():
        runner.sink = timed[name]
    expected = {
        name: sum(len(backlog.records[t]) for t in TOPIC_OF.values() if _kind(t) in sinks.sinks[name].kinds)
        for name in names
    }
    cpu_before = cpu_seconds(os.getpid())
    broker_before = cpu_seconds(stack.broker_pid)
    running = asyncio.create_task(sinks.run())
    finished: dict[str, float] = {}
    try:
        while len(finished) < len(names):
            if running.done():
                running.result()
                raise RuntimeError("the sinks stopped")
            now = time.perf_counter()
            for name, runner in sinks.runners.items():
                if name not in finished and runner.written + runner.set_aside >= expected[name]:
                    finished[name] = now
            await asyncio.sleep(0.005)
        cpu = cpu_seconds(os.getpid()) - cpu_before
        broker_cpu = cpu_seconds(stack.broker_pid) - broker_before
        postgres_cpu = await stores.backend_cpu() if "postgres" in names else 0.0
    finally:
        await sinks.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, 30)
    try:
        stored = await stores.counts()
    finally:
        await stores.drop()
    per_sink = {}
    for name in names:
        first = timed[name].first_write
        assert first is not None
        seconds = finished[name] - first
        per_sink[name] = {
            "events": expected[name],
            "seconds": seconds,
            "per_second": expected[name] / seconds,
            "set_aside": sinks.runners[name].set_aside,
        }
    wanted = expected_counts(backlog, names)
    result = {
        "sinks": list(names),
        "per_sink": per_sink,
        "process_cpu_seconds": cpu,
        "postgres_backends_cpu_seconds": postgres_cpu,
        "broker_cpu_seconds": broker_cpu,
        "cpu_us_per_event": {
            "sinks_process": cpu / backlog.events * 1e6,
            **({"postgres_server": postgres_cpu / backlog.events * 1e6} if "postgres" in names else {}),
        },
        "stored": stored,
        "expected": wanted,
        "complete": all(stored.get(k) == v for k, v in wanted.items()),
    }
    figures = ", ".join(
        f"{name} {s['per_second']:,.0f} events/s ({s['events']:,} in {s['seconds']:.1f} s)"
        for name, s in per_sink.items()
    )
    print(
        f"  {' + '.join(names)}: {figures}; CPU: this process {cpu:.1f} s"
        + (f", PostgreSQL's backends {postgres_cpu:.1f} s" if "postgres" in names else "")
        + f", broker {broker_cpu:.1f} s; "
        f"stores {'hold exactly what was produced' if result['complete'] else f'DIFFER: {stored} vs {wanted}'}"
    )
    return result


def _kind(topic: str) -> str:
    return next(kind.value for kind, name in TOPIC_OF.items() if name == topic)


DRAINS = ("redis", "postgres", "redis+postgres")


async def backlog_phase(stack: Stack, events: int, customers: int, drains: Sequence[str] = DRAINS) -> dict[str, Any]:
    started = time.perf_counter()
    backlog = make_backlog(load_config(), events, customers)
    by_topic = {topic: len(records) for topic, records in backlog.records.items()}
    print(
        f"  {backlog.events:,} output events from {backlog.receipts:,} receipts "
        f"({', '.join(f'{t} {n:,}' for t, n in by_topic.items())}), made in {time.perf_counter() - started:.0f} s"
    )
    results: dict[str, Any] = {"events": backlog.events, "receipts": backlog.receipts, "by_topic": by_topic}
    with fresh_broker(stack) as empty:
        prefix = f"sb{uuid.uuid4().hex[:6]}-"
        began = time.perf_counter()
        await produce_backlog(empty.bootstrap, prefix, backlog)
        print(f"  produced into {empty.bootstrap} in {time.perf_counter() - began:.0f} s")
        results["drains"] = []
        for names in drains:
            results["drains"].append(await drain(empty, prefix, backlog, names.split("+")))
    return results


@dataclass
class Groups:
    """The sinks' consumer groups, and how far they have committed against the topics' ends.

    The ends are the high watermarks of a reader that follows the topics (the embedded broker
    answers a ListOffsets with the start of a partition's last record batch, not its end)."""

    bootstrap: str
    groups: dict[str, list[str]]  # group -> the topics its sink reads
    _admin: AIOKafkaAdminClient | None = None
    _consumer: AIOKafkaConsumer | None = None
    _reader: asyncio.Task[None] | None = None
    _partitions: list[TopicPartition] = field(default_factory=list)

    async def start(self) -> Groups:
        topics = sorted({topic for read in self.groups.values() for topic in read})
        found = await wait_for_topics(self.bootstrap, topics, timeout=120)
        self._partitions = [TopicPartition(t, p) for t, parts in found.items() for p in sorted(parts)]
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await self._admin.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
        )
        await self._consumer.start()
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)
        self._reader = asyncio.create_task(self._follow())
        return self

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            await self._consumer.getmany(timeout_ms=100, max_records=10_000)

    async def unwritten(self) -> int | None:
        """Output records some sink has not committed yet; None while the reader is behind."""
        assert self._admin is not None and self._consumer is not None
        ends = {}
        for tp in self._partitions:
            end = self._consumer.highwater(tp)
            if end is None or await self._consumer.position(tp) < end:
                return None
            ends[tp] = end
        behind = 0
        for group, read in self.groups.items():
            partitions = [tp for tp in self._partitions if tp.topic in read]
            committed = await self._admin.list_consumer_group_offsets(group, partitions=partitions)
            for tp in partitions:
                at, end = committed.get(tp), ends[tp]
                behind += end - (at.offset if at is not None and at.offset >= 0 else 0)
        return behind

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._admin is not None:
            await self._admin.close()
        if self._consumer is not None:
            await self._consumer.stop()


def sink_groups(prefix: str) -> dict[str, list[str]]:
    """Each sink's consumer group in a namespace (`worker_env`'s app id), and the topics it reads."""
    every = [prefix + topic for topic in TOPIC_OF.values()]
    return {
        f"{prefix}app-sink-redis": [prefix + "receipt-messages", prefix + "customer-status"],
        f"{prefix}app-sink-postgres": every,
    }


@contextlib.contextmanager
def sinks_process(ns: Namespace) -> Iterator[SinksProcess]:
    env = dict(ns.workers[0].env)
    env["WEB_PORT"] = str(_free_port())
    process = SinksProcess(env, ns.stack.workdir / f"{ns.name}-sinks.log").start()
    try:
        yield process
    finally:
        process.stop()


def _free_port() -> int:
    from streams.local.service import free_port

    return free_port()


async def completion(stack: Stack, workload: Workload, rate: float, seconds: float) -> dict[str, Any]:
    ns = Namespace(stack, "")
    await ns.create_database()
    count = min(int(rate * seconds), len(workload.records))
    records, ids = workload.records[:count], workload.receipt_ids[:count]
    try:
        worker = ns.start_worker()
        with sinks_process(ns) as sinks:
            answers = await Answers(stack.bootstrap, ns.prefix + "receipt-messages").start()
            groups = Groups(stack.bootstrap, sink_groups(ns.prefix))
            try:
                await groups.start()
                await ns.warm_up(answers, settle=2.0)
                while await groups.unwritten() != 0:  # the warm-up stored: the sinks have joined
                    await asyncio.sleep(0.1)
                assert worker.process is not None and sinks.process is not None
                pids = {"worker": worker.process.pid, "sinks": sinks.process.pid, "broker": stack.broker_pid}
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                began = time.monotonic()
                sent_at = await paced(stack, ns.prefix + "receipts", records, ids, rate)
                offered = len(records) / (max(sent_at.values()) - began)
                missing = await answers.wait_for(set(sent_at), timeout=600)
                last_answer = max(answers.arrivals[i] for i in sent_at if i in answers.arrivals)
                while await groups.unwritten() != 0:
                    await asyncio.sleep(0.02)
                complete = time.monotonic()
                took = complete - began
                cpu = {name: (cpu_seconds(pid) - cpu_before[name]) / took * 100 for name, pid in pids.items()}
                delays = [answers.arrivals[i] - at for i, at in sent_at.items() if i in answers.arrivals]
                stored = await _stored_receipts(ns)
            finally:
                await groups.stop()
                await answers.stop()
        ns.stop_workers()
    finally:
        await ns.drop()
    answered = len(sent_at) - len(missing)
    result = {
        "offered_per_second": offered,
        "unique_receipts": len(sent_at),
        "answered": answered,
        **percentiles(delays),
        "sinks_complete_after_last_answer_s": complete - last_answer,
        "answers_took_s": last_answer - began,
        "stored_receipt_messages": stored,
        "cpu_percent": cpu,
    }
    print(
        f"  at {offered:,.0f} receipts/s offered: {answered:,} of {len(sent_at):,} unique receipts answered, "
        f"p50 {result.get('p50_ms', 0):,.0f} ms, p99 {result.get('p99_ms', 0):,.0f} ms; "
        f"the sinks held everything {result['sinks_complete_after_last_answer_s']:.2f} s after the last answer "
        f"(PostgreSQL has {stored:,} receipts' messages); CPU: "
        + ", ".join(f"{name} {percent:.0f}%" for name, percent in cpu.items())
    )
    return result


async def _stored_receipts(ns: Namespace) -> int:
    connection = await asyncpg.connect(ns.database)
    try:
        return int(await connection.fetchval("SELECT count(DISTINCT receipt_id) FROM receipt_messages"))
    finally:
        await connection.close()


async def run(
    stack: Stack,
    *,
    phases: set[str],
    events: int,
    customers: int,
    rate: float,
    seconds: float,
    also: float | None,
    drains: Sequence[str] = DRAINS,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if "backlog" in phases:
        print(f"sinks draining a backlog (each alone, then both in one process; at least {events:,} events):")
        results["backlog"] = await backlog_phase(stack, events, customers, drains)
    if "completion" in phases:
        print("sinks in their own process beside a worker, receipts paced (open loop):")
        rates = [rate, *([also] if also else [])]
        workload = Workload.month(int(max(rates) * seconds) + 1000, customers, seed=13)
        results["completion"] = []
        for offered in rates:
            with fresh_broker(stack) as empty:
                results["completion"].append(await completion(empty, workload, offered, seconds))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--also-rate", type=float, default=None)
    parser.add_argument("--only", default="backlog,completion")
    parser.add_argument("--drains", default=",".join(DRAINS), help="which sinks drain the backlog, in turn")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    async def measure() -> dict[str, Any]:
        with stack() as running:
            return await run(
                running,
                phases=set(args.only.split(",")),
                events=args.events,
                customers=args.customers,
                rate=args.rate,
                seconds=args.seconds,
                also=args.also_rate,
                drains=args.drains.split(","),
            )

    results = asyncio.run(measure())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"sinks-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
