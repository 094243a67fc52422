"""`make bench`: the whole pipeline's throughput and latency, with its references beside it.

    python -m benchmarks.bench [--receipts 100000] [--customers 100000] [--latency-seconds 30]
                               [--skip-two-workers] [--out bench/results]

On one embedded Tansu broker, with Redis and PostgreSQL (the machine's, else
private ones from wheels), it generates a realistic month: Zipf-distributed
activity over `--customers`, 5% POS retries, 1% returns, 5% anonymous, the shipped
configuration (both status systems, every offer and message rule). Then, each in a
fresh namespace:

1. the references: a plain aiokafka consume-decode-count-produce loop, a bare
   Faust agent that only iterates, and the pure core (the rules without Kafka, on
   one core), over the same receipts;
2. saturation: the receipts queued while one worker runs (by default without sinks,
   which run in a process of their own in production; `--sinks` puts them in the
   worker): receipts per second from its first answer to its last, how long the sinks
   took to have everything when it runs them, and the worker's memory before and after;
3. the same with two worker processes;
4. receipt -> message latency at a fixed offered load of 1,000 receipts/s, and at
   the rate step 2 measured, with the broker's and the worker's CPU;
5. the sinks (`benchmarks/sinks.py`): each sink's events/s draining a backlog of
   200,000 output events, and how long after the last receipt message a `loyalty
   sinks` process beside a worker holds everything at 1,000 receipts/s (and at
   half the rate step 2 measured, which the worker keeps up with).
6. the customers table at scale (`benchmarks/state_scale.py`): `--state-customers`
   customers' states built through the live path on each store (RocksDB, memory),
   then the worker's RSS, its data directory, bytes per customer, throughput, and
   the time from a restart to the first answered receipt.

It prints the figures and writes them to `--out` as JSON plus a PNG chart. It
asserts nothing: docs/performance.md says how its figures are read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
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


async def references(stack: Stack, workload: Workload) -> dict[str, Any]:
    topic = f"ref-{uuid.uuid4().hex[:6]}"
    await produce(stack.bootstrap, topic, workload.records)
    found: dict[str, Any] = {}
    for kind in ("aiokafka", "faust", "core"):
        found[kind] = await asyncio.to_thread(reference, kind, stack.bootstrap, topic, len(workload.records))
        cpu = found[kind].get("cpu_us_per_receipt") or found[kind].get("us_per_receipt") or float("nan")
        print(f"  reference {kind:<9} {found[kind]['per_second']:>9,.0f} receipts/s, {cpu:.0f} µs CPU each")
    return found


async def saturation(stack: Stack, workload: Workload, workers: int, sinks: str) -> dict[str, Any]:
    ns = Namespace(stack, sinks)
    await ns.create_database()
    try:
        for _ in range(workers):
            ns.start_worker()
        answers = await Answers(stack.bootstrap, ns.prefix + "receipt-messages").start()
        try:
            await ns.warm_up(answers, settle=2.0 if workers == 1 else 15.0)
            pids = [w.process.pid for w in ns.workers if w.process is not None]
            rss_before = [rss_mib(pid) for pid in pids]
            cpu_before = {pid: cpu_seconds(pid) for pid in [*pids, stack.broker_pid]}
            ids = set(workload.receipt_ids)
            sent = time.monotonic()
            await produce(stack.bootstrap, ns.prefix + "receipts", workload.records)
            produced = time.monotonic() - sent
            missing = await answers.wait_for(ids, timeout=3600)
            answered = [answers.arrivals[i] for i in ids if i in answers.arrivals]
            first, last = min(answered), max(answered)
            cpu = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in cpu_before}
            rss_after = [rss_mib(pid) for pid in pids]
            stored_at, stored = None, 0
            deadline = time.monotonic() + 600
            while sinks and time.monotonic() < deadline:
                stored = await ns.stored_messages()
                if stored >= len(answered):
                    stored_at = time.monotonic()
                    break
                await asyncio.sleep(0.5)
        finally:
            await answers.stop()
            ns.stop_workers()
    finally:
        await ns.drop()
    seconds = last - first
    result = {
        "workers": workers,
        "receipts": len(ids),
        "answered": len(answered),
        "unanswered": len(missing),
        "produce_seconds": produced,
        "seconds": seconds,
        "per_second": len(answered) / seconds if seconds > 0 else float("nan"),
        "sinks_caught_up_after_last_answer_s": (stored_at - last) if stored_at is not None else None,
        "stored_receipt_messages": stored,
        "worker_rss_mib_before": rss_before,
        "worker_rss_mib_after": rss_after,
        "memory_per_100k_customers_mib": (sum(rss_after) - sum(rss_before)) / workload.customers * 100_000,
        "worker_cpu_percent": [cpu[pid] / (seconds or 1) * 100 for pid in pids],
        "worker_cpu_us_per_receipt": sum(cpu[pid] for pid in pids) / max(len(answered), 1) * 1e6,
        "broker_cpu_percent": cpu[stack.broker_pid] / (seconds or 1) * 100,
    }
    print(
        f"  {workers} worker(s): {result['per_second']:>9,.0f} receipts/s "
        f"({len(answered):,} answered in {seconds:.1f}s, {len(missing)} unanswered); sinks had everything "
        f"{result['sinks_caught_up_after_last_answer_s'] or float('nan'):.1f}s after the last answer; "
        f"worker CPU {result['worker_cpu_us_per_receipt']:.0f} µs per receipt; "
        f"memory {result['memory_per_100k_customers_mib']:.0f} MiB per 100k customers"
    )
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


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    rates = {
        "aiokafka loop": results["references"]["aiokafka"]["per_second"],
        "bare Faust agent": results["references"]["faust"]["per_second"],
        "pure core, one core": results["references"]["core"]["per_second"],
        "pipeline, 1 worker": results["saturation"][0]["per_second"],
    }
    if len(results["saturation"]) > 1:
        rates["pipeline, 2 workers"] = results["saturation"][1]["per_second"]
    bars = left.bar(list(rates), list(rates.values()), color=["#999", "#bbb", "#ccc", "#2a7", "#185"][: len(rates)])
    left.bar_label(bars, labels=[f"{v:,.0f}" for v in rates.values()])
    left.axhline(10_000, color="#c33", linestyle="--", linewidth=1, label="target: 10,000/s per worker")
    left.set_ylabel("receipts per second")
    left.set_title("Throughput (receipts queued, all sinks on)")
    left.legend(loc="upper right")
    left.tick_params(axis="x", labelrotation=15)
    keys = ["p50_ms", "p95_ms", "p99_ms", "max_ms"]
    runs = [(f"{r['offered_per_second']:,.0f}/s offered ({r['label']})", r) for r in results["latency"]]
    if "echo" in results:  # the floor: one plain aiokafka hop at 1,000/s on the same broker
        runs.append((f"1,000/s, {results['echo']['label']}", results["echo"]))
    width = 0.8 / len(runs)
    for index, (label, run) in enumerate(runs):
        positions = [k + (index - (len(runs) - 1) / 2) * width for k in range(len(keys))]
        values = [run.get(k, 0) for k in keys]
        drawn = right.bar(positions, values, width, label=label)
        right.bar_label(drawn, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    right.axhline(50, color="#c33", linestyle="--", linewidth=1, label="target: p99 50 ms at 1,000/s")
    right.set_xticks(range(len(keys)), ["p50", "p95", "p99", "max"])
    right.set_yscale("log")
    right.set_ylabel("receipt -> receipt message, ms")
    right.set_title("Latency")
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.suptitle(f"make bench, {results['machine']['commit']} ({results['machine']['cores']} cores, Tansu)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with stack() as running:
        print(f"workload: {args.receipts:,} receipts over {args.customers:,} customers (Zipf), generating ...")
        workload = Workload.month(args.receipts, args.customers)
        print(f"  {workload.customers:,} customers bought; {len(set(workload.receipt_ids)):,} distinct receipts")
        results: dict[str, Any] = {
            "machine": {
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "commit": subprocess.run(
                    ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
                ).stdout.strip()
                or "unknown",
                "at": datetime.now(BERLIN).isoformat(timespec="seconds"),
            },
            "workload": {"receipts": args.receipts, "customers": args.customers, "buying": workload.customers},
        }
        results["sinks"] = args.sinks
        phases = set(args.only.split(","))
        if "references" in phases:
            print("references (the same receipts):")
            with fresh_broker(running) as empty:
                results["references"] = await references(empty, workload)
        saturated = args.saturation_rate
        if "saturation" in phases:
            print(f"saturation (receipts queued while the workers run; sinks: {args.sinks or 'none'}):")
            results["saturation"] = []
            for workers in (1,) if args.skip_two_workers else (1, 2):
                with fresh_broker(running) as empty:
                    results["saturation"].append(await saturation(empty, workload, workers, args.sinks))
            saturated = results["saturation"][0]["per_second"]
        if "latency" in phases:
            print("latency (paced, open loop):")
            fresh = Workload.month(int(max(1000, saturated) * args.latency_seconds) + 1000, args.customers, seed=12)
            with fresh_broker(running) as empty:
                results["echo"] = await echo_latency(empty, fresh, 1000.0, args.latency_seconds, FETCH_MAX_WAIT_MS)
            results["latency"] = []
            for rate, label in ((1000.0, "fixed"), (saturated, "saturation")):
                with fresh_broker(running) as empty:
                    results["latency"].append(
                        await latency(empty, fresh, rate, args.latency_seconds, label, args.sinks)
                    )
        if "state" in phases:
            from benchmarks import state_scale

            print(f"state ({args.state_customers:,} customers' states, each store; benchmarks/state_scale.py):")
            results["state"] = []
            for store in ("rocksdb", "memory"):
                with fresh_broker(running) as empty:
                    results["state"].append(
                        await state_scale.measure(empty, store, args.state_customers, args.state_receipts)
                    )
        if "sinks" in phases:
            from benchmarks import sinks

            results["sinks"] = await sinks.run(
                running,
                phases={"backlog", "completion"},
                events=args.sink_events,
                customers=20_000,
                rate=1000.0,
                seconds=args.latency_seconds,
                # A rate the worker keeps up with: half its saturation with sinks in it, or 300/s.
                also=results["saturation"][0]["per_second"] / 2 if "saturation" in results else 300.0,
            )
    if "saturation" not in results or "references" not in results:
        return results
    one = results["saturation"][0]["per_second"]
    results["ratios"] = {
        "pipeline_vs_aiokafka": one / results["references"]["aiokafka"]["per_second"],
        "pipeline_vs_bare_faust": one / results["references"]["faust"]["per_second"],
        "pipeline_vs_core": one / results["references"]["core"]["per_second"],
    }
    if len(results["saturation"]) > 1:
        results["ratios"]["two_workers_vs_one"] = results["saturation"][1]["per_second"] / one
    loop = results["references"]["aiokafka"]
    results["ratios"]["worker_cpu_vs_aiokafka"] = (
        results["saturation"][0]["worker_cpu_us_per_receipt"] / loop["cpu_us_per_receipt"]
    )
    fixed = next((run for run in results.get("latency", []) if run["label"] == "fixed"), None)
    if fixed is not None and results.get("echo", {}).get("p99_ms"):
        results["ratios"]["p99_vs_echo"] = fixed["p99_ms"] / results["echo"]["p99_ms"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--skip-two-workers", action="store_true")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument(
        "--sinks", default="", help="the workers' LOYALTY_SINKS ('' for none: the sinks run in a process of their own)"
    )
    parser.add_argument(
        "--only", default="references,saturation,latency,sinks,state", help="phases to run, comma-separated"
    )
    parser.add_argument("--state-customers", type=int, default=1_000_000, help="customers the state phase builds")
    parser.add_argument("--state-receipts", type=int, default=100_000, help="the state phase's throughput receipts")
    parser.add_argument("--sink-events", type=int, default=200_000, help="the sinks' backlog, output events")
    parser.add_argument(
        "--saturation-rate",
        type=float,
        default=2000.0,
        help="offered rate of the saturation latency run without --only saturation",
    )
    args = parser.parse_args()
    results = asyncio.run(run(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if "ratios" not in results:
        print(f"written: {out / stem}.json (no ratios without references and saturation)")
        return
    ratios = results["ratios"]
    print(
        "ratios: pipeline/aiokafka {:.3f}, pipeline/bare Faust {:.3f}, pipeline/pure core {:.3f}{}".format(
            ratios["pipeline_vs_aiokafka"],
            ratios["pipeline_vs_bare_faust"],
            ratios["pipeline_vs_core"],
            f", 2 workers/1 worker {ratios['two_workers_vs_one']:.2f}" if "two_workers_vs_one" in ratios else "",
        )
    )
    one = results["saturation"][0]
    print(
        f"targets: drained {one['per_second']:,.0f}/s (10,000), {ratios['pipeline_vs_aiokafka']:.2f} of the aiokafka"
        f" loop (0.25); worker CPU {ratios['worker_cpu_vs_aiokafka']:.1f}x the loop's (4x)"
        + (f"; p99 at 1,000/s {ratios['p99_vs_echo']:.2f}x the echo's (1.5x)" if "p99_vs_echo" in ratios else "")
    )
    if "latency" not in results:
        print(f"written: {out / stem}.json")
        return
    chart(results, out / f"{stem}.png")
    print(f"written: {out / stem}.json and .png")


if __name__ == "__main__":
    main()
