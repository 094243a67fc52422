"""What the benchmarks share: the embedded stack, a generated month, namespaces, workers, answers, paced load."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from config.settings import Settings
from streams.local.broker import EmbeddedBroker
from streams.local.generator import ReceiptFactory, TrafficShape
from streams.local.postgres import postgres_or_embedded
from streams.local.probe import WorkerProcess, produce, wait_for_topics, worker_env
from streams.local.redis import EmbeddedRedis, reachable
from streams.local.service import free_port

#: The workers' wall clock: the month's receipts are dated before it (1-21 November).
CLOCK = "2026-11-22T12:00:00+00:00"
BERLIN = ZoneInfo("Europe/Berlin")
#: The workers' default, which the echo reference uses too.
FETCH_MAX_WAIT_MS = Settings.model_fields["kafka_fetch_max_wait_ms"].default
#: The paced load's producer batches what the tills send within this many milliseconds (a
#: fleet of tills is many producers; one producer with a short linger is the nearest we get).
POS_LINGER_MS = 5


@dataclass
class Workload:
    records: list[tuple[bytes, bytes]]  # key, value, in the order the tills send them
    receipt_ids: list[str]  # the receipt id of each record (a retry repeats one)
    customers: int  # distinct customers with at least one receipt

    @classmethod
    def month(cls, receipts: int, customers: int, seed: int = 11) -> Workload:
        factory = ReceiptFactory(TrafficShape(customers=customers, seed=seed))
        start, span = datetime(2026, 11, 1, tzinfo=BERLIN), timedelta(days=20)
        records, ids, buyers = [], [], set()
        for n in range(receipts):
            value = factory.next((start + span * (n / receipts)).replace(microsecond=0))
            key = value.get("customer_id") or value["card_number"]
            records.append((key.encode(), json.dumps(value).encode()))
            ids.append(value["receipt_id"])
            if value.get("customer_id"):
                buyers.add(value["customer_id"])
        return cls(records, ids, len(buyers))


@dataclass
class Stack:
    bootstrap: str
    broker_pid: int
    redis_url: str
    postgres_dsn: str  # a server's maintenance DSN; each run gets a database of its own
    workdir: Path


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="loyalty-bench-") as workdir:
        broker = stack.enter_context(EmbeddedBroker())
        redis_url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
        if not reachable(redis_url):
            redis_url = stack.enter_context(EmbeddedRedis()).url
        dsn = stack.enter_context(
            postgres_or_embedded(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
        )
        assert broker.pid is not None
        yield Stack(broker.bootstrap, broker.pid, redis_url, dsn, Path(workdir))


@contextlib.contextmanager
def fresh_broker(stack: Stack) -> Iterator[Stack]:
    """The same stores with a broker of its own: Tansu's work per fetch grows with what it holds,
    so each measurement starts on an empty one."""
    with EmbeddedBroker() as broker:
        assert broker.pid is not None
        yield dataclasses.replace(stack, bootstrap=broker.bootstrap, broker_pid=broker.pid)


def _database(dsn: str, name: str) -> str:
    return f"{dsn.rsplit('/', 1)[0]}/{name}"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(latencies: list[float]) -> dict[str, float]:
    if len(latencies) < 2:
        return {}
    q = statistics.quantiles(latencies, n=100)
    return {"p50_ms": q[49] * 1e3, "p95_ms": q[94] * 1e3, "p99_ms": q[98] * 1e3, "max_ms": max(latencies) * 1e3}


class Answers:
    """Reads a namespace's receipt messages, keeping the first arrival of each receipt id."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.arrivals: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> Answers:
        partitions = (await wait_for_topics(self.bootstrap, [self.topic], timeout=120))[self.topic]
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, fetch_max_wait_ms=10, enable_auto_commit=False
        )
        await self._consumer.start()
        assigned = [TopicPartition(self.topic, n) for n in sorted(partitions)]
        self._consumer.assign(assigned)
        await self._consumer.seek_to_beginning(*assigned)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=10_000)
            now = time.monotonic()
            for records in batches.values():
                for record in records:
                    self.arrivals.setdefault(orjson.loads(record.value)["receipt_id"], now)

    async def wait_for(self, ids: set[str], timeout: float) -> set[str]:
        """Waits until every id has an answer or `timeout` passes; returns the ids still unanswered."""
        deadline = time.monotonic() + timeout
        missing = ids - self.arrivals.keys()
        while missing and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            missing = {i for i in missing if i not in self.arrivals}
        return missing

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


@dataclass
class Namespace:
    """One pipeline on the shared broker: its own topics, consumer group, Redis keys and database."""

    stack: Stack
    sinks: str
    name: str = field(default_factory=lambda: f"b{uuid.uuid4().hex[:6]}")
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{self.name}-"

    @property
    def database(self) -> str:
        return _database(self.stack.postgres_dsn, f"bench_{self.name}")

    async def create_database(self) -> None:
        maintenance = await asyncpg.connect(self.stack.postgres_dsn)
        try:
            await maintenance.execute(f"CREATE DATABASE bench_{self.name}")
        finally:
            await maintenance.close()

    async def drop(self) -> None:
        maintenance = await asyncpg.connect(self.stack.postgres_dsn)
        try:
            await maintenance.execute(f"DROP DATABASE IF EXISTS bench_{self.name} WITH (FORCE)")
        finally:
            await maintenance.close()
        redis = aioredis.from_url(self.stack.redis_url)
        try:
            keys = [key async for key in redis.scan_iter(f"{self.prefix}*", count=5000)]
            for start in range(0, len(keys), 5000):
                await redis.delete(*keys[start : start + 5000])
        finally:
            await redis.aclose()

    def start_worker(self, **overrides: str) -> WorkerProcess:
        env = worker_env(
            self.stack.bootstrap,
            self.prefix,
            str(self.stack.workdir / self.name / str(len(self.workers))),
            free_port(),
            LOG_LEVEL="warning",
            LOYALTY_CLOCK_START=CLOCK,
            LOYALTY_SINKS=self.sinks,
            REDIS_URL=self.stack.redis_url,
            LOYALTY_REDIS_PREFIX=self.prefix,
            DATABASE_URL=self.database,
            **overrides,
        )
        worker = WorkerProcess(env, self.stack.workdir / f"{self.name}-{len(self.workers)}.log").start()
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    async def stored_messages(self) -> int:
        connection = await asyncpg.connect(self.database)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM receipt_messages"))
        except asyncpg.UndefinedTableError:
            return 0
        finally:
            await connection.close()

    async def warm_up(self, answers: Answers, settle: float) -> None:
        """One receipt per customer of a few dozen answered, so every partition has been assigned and fetched."""
        warm = [warm_receipt(f"{self.name}-W-{n}", f"W-{n}") for n in range(40)]  # customers of their own
        records = [(r["customer_id"].encode(), json.dumps(r).encode()) for r in warm]
        await produce(self.stack.bootstrap, self.prefix + "receipts", records)
        missing = await answers.wait_for({r["receipt_id"] for r in warm}, timeout=180)
        if missing:
            raise RuntimeError(f"{len(missing)} warm-up receipts were never answered; see {self.stack.workdir}")
        await asyncio.sleep(settle)


def warm_receipt(receipt_id: str, customer: str) -> dict[str, Any]:
    return {
        "receipt_id": receipt_id,
        "type": "sale",
        "customer_id": customer,
        "pos_id": "S1-POS1",
        "store_id": "S1",
        "issued_at": "2026-11-01T09:00:00+01:00",
        "currency": "EUR",
        "total": "10.00",
    }


def reference(kind: str, bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.references", kind, bootstrap, topic, str(count)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def latency(
    stack: Stack,
    workload: Workload,
    rate: float,
    seconds: float,
    label: str,
    sinks: str,
    overrides: dict[str, str] | None = None,
) -> dict[str, Any]:
    ns = Namespace(stack, sinks)
    await ns.create_database()
    count = min(int(rate * seconds), len(workload.records))
    records, ids = workload.records[:count], workload.receipt_ids[:count]
    try:
        worker = ns.start_worker(**(overrides or {}))
        answers = await Answers(stack.bootstrap, ns.prefix + "receipt-messages").start()
        try:
            await ns.warm_up(answers, settle=2.0)
            assert worker.process is not None
            pids = [worker.process.pid, stack.broker_pid]
            cpu_before = {pid: cpu_seconds(pid) for pid in pids}
            began = time.monotonic()
            sent_at = await paced(stack, ns.prefix + "receipts", records, ids, rate)
            offered = len(records) / (max(sent_at.values()) - began)
            missing = await answers.wait_for(set(sent_at), timeout=600)
            took = time.monotonic() - began
            cpu = {pid: (cpu_seconds(pid) - cpu_before[pid]) / took * 100 for pid in pids}
            delays = [answers.arrivals[i] - at for i, at in sent_at.items() if i in answers.arrivals]
        finally:
            await answers.stop()
            ns.stop_workers()
    finally:
        await ns.drop()
    result = {
        "label": label,
        "offered_per_second": offered,
        "receipts": len(sent_at),
        "unanswered": len(missing),
        **percentiles(delays),
        "worker_cpu_percent": cpu[pids[0]],
        "broker_cpu_percent": cpu[pids[1]],
    }
    print(
        f"  latency at {offered:,.0f}/s offered ({label}): p50 {result.get('p50_ms', 0):.0f} ms, "
        f"p95 {result.get('p95_ms', 0):.0f} ms, p99 {result.get('p99_ms', 0):.0f} ms, "
        f"max {result.get('max_ms', 0):.0f} ms"
        f"; worker {result['worker_cpu_percent']:.0f}% CPU, broker {result['broker_cpu_percent']:.0f}%"
    )
    return result


async def echo_latency(stack: Stack, workload: Workload, rate: float, seconds: float, wait: int) -> dict[str, Any]:
    """Latency of one plain aiokafka hop (consume, decode, produce an answer) at the same paced load."""
    topic = f"echo-{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=POS_LINGER_MS)
    await producer.start()
    try:
        await (await producer.send(topic, b'{"receipt_id": "warm-up"}', key=b"warm-up"))
        await (await producer.send(topic + "-echo", b'{"receipt_id": "warm-up"}', key=b"warm-up"))
    finally:
        await producer.stop()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.references", "echo", stack.bootstrap, topic, str(wait)],
        stderr=subprocess.DEVNULL,
    )
    answers = await Answers(stack.bootstrap, topic + "-echo").start()
    try:
        count = min(int(rate * seconds), len(workload.records))
        sent_at = await paced(stack, topic, workload.records[:count], workload.receipt_ids[:count], rate)
        missing = await answers.wait_for(set(sent_at.keys()), timeout=300)
        delays = [answers.arrivals[i] - at for i, at in sent_at.items() if i in answers.arrivals]
    finally:
        await answers.stop()
        process.kill()
        process.wait()
    result = {"label": f"aiokafka echo, fetch wait {wait} ms", "unanswered": len(missing), **percentiles(delays)}
    print(
        f"  latency of one plain aiokafka hop at {rate:,.0f}/s: p50 {result.get('p50_ms', 0):.0f} ms, "
        f"p99 {result.get('p99_ms', 0):.0f} ms, max {result.get('max_ms', 0):.0f} ms (fetch wait {wait} ms)"
    )
    return result


async def paced(
    stack: Stack, topic: str, records: list[tuple[bytes, bytes]], ids: list[str], rate: float
) -> dict[str, float]:
    """Sends the records at `rate` a second, open loop; returns when each receipt id was first sent."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=POS_LINGER_MS)
    await producer.start()
    sent_at: dict[str, float] = {}
    began = time.monotonic()
    deliveries = []
    try:
        for n, ((key, value), receipt_id) in enumerate(zip(records, ids, strict=True)):
            due = began + n / rate
            if due - time.monotonic() > 0.002:
                await asyncio.sleep(due - time.monotonic())
            sent_at.setdefault(receipt_id, time.monotonic())
            deliveries.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return sent_at
