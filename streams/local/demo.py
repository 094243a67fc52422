"""`loyalty demo`: the whole pipeline on one machine, watched live, ending in a summary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import ClientSession
from rich.console import Console
from rich.live import Live
from rich.table import Table

from config.settings import Settings
from models.periods import PeriodKind, period_containing
from models.schema import LoyaltyConfig
from streams.local.broker import EmbeddedBroker
from streams.local.generator import GeneratorStats, TrafficShape, generate
from streams.local.postgres import postgres_or_embedded
from streams.local.probe import OutputReader, SinksProcess, WorkerProcess, produce, running
from streams.local.prometheus import LocalPrometheus, MonitoringError, find_prometheus, load_shipped, local_config
from streams.local.redis import EmbeddedRedis
from streams.local.redis import reachable as redis_reachable
from streams.local.service import free_port

WARMUP_TIMEOUT = 120.0
DRAIN_TIMEOUT = 60.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def broker_listening(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def run_demo(
    settings: Settings,
    config: LoyaltyConfig,
    *,
    rate: float,
    customers: int,
    duration: float,
    prometheus: bool = False,
) -> dict[str, Any]:
    console = Console()
    with contextlib.ExitStack() as stack:
        bootstrap = settings.kafka_bootstrap
        prefix = settings.loyalty_topic_prefix
        if not broker_listening(bootstrap):
            broker = stack.enter_context(EmbeddedBroker())
            bootstrap = broker.bootstrap
            console.print(f"[bold]embedded Tansu broker[/] on {bootstrap} (memory storage)")
        else:
            prefix = prefix or f"demo-{uuid.uuid4().hex[:6]}-"
            console.print(f"[bold]using the broker at[/] {bootstrap}, topics prefixed {prefix!r}")
        stores = stack.enter_context(demo_stores(settings, console))
        workdir = Path(tempfile.mkdtemp(prefix="loyalty-demo-"))
        web_port, sinks_port = free_port(), free_port()
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP=bootstrap,
            LOYALTY_TOPIC_PREFIX=prefix,
            LOYALTY_APP_ID=f"loyalty-demo-{uuid.uuid4().hex[:6]}",
            LOYALTY_DATA_DIR=str(workdir),
            WEB_PORT=str(web_port),
            LOG_LEVEL="warning",
            LOYALTY_SINKS="",  # the production shape: the sinks run in a process of their own
            REDIS_URL=stores.redis_url,
            LOYALTY_REDIS_PREFIX=stores.redis_prefix,
            DATABASE_URL=stores.database_url,
        )
        stack.enter_context(running(WorkerProcess(env, workdir / "worker.log")))
        stack.enter_context(running(SinksProcess({**env, "WEB_PORT": str(sinks_port)}, workdir / "sinks.log")))
        console.print(
            f"worker started (HTTP on {web_port}) and the sinks in a process of their own (/health and /metrics "
            f"on {sinks_port}); their logs: {workdir}/worker.log, {workdir}/sinks.log"
        )
        watching = stack.enter_context(local_prometheus(console, web_port, workdir, sinks_port)) if prometheus else None
        summary = asyncio.run(_drive(console, bootstrap, prefix, config, rate, customers, duration, sinks_port))
        summary["stores"] = asyncio.run(_inspect_stores(stores, f"http://127.0.0.1:{web_port}", summary))
        _print_summary(console, summary)
        _print_where_to_look(console, stores, web_port)
        if watching is not None:
            _print_alerts(console, watching)
    return summary


@contextlib.contextmanager
def local_prometheus(
    console: Console, web_port: int, workdir: Path, sinks_port: int
) -> Iterator[LocalPrometheus | None]:
    """A Prometheus scraping the demo's worker and sinks through deploy/prometheus/ (rules included),
    where one is installed; None, saying why, where not. When the demo runs in a terminal, it stays up
    after the summary until Enter is pressed."""
    binary = find_prometheus()
    if binary is None:
        console.print("[yellow]--prometheus: no prometheus binary on PATH[/] (Debian: apt-get install prometheus)")
        yield None
        return
    try:
        scrape = {"loyalty-worker": [f"127.0.0.1:{web_port}"], "loyalty-sinks": [f"127.0.0.1:{sinks_port}"]}
        server = LocalPrometheus(
            binary, local_config(load_shipped(), scrape, drop_other_jobs=True), workdir / "prometheus"
        ).start()
    except MonitoringError as exc:
        console.print(f"[yellow]--prometheus: {exc}[/]")
        yield None
        return
    console.print(f"[bold]Prometheus[/] on {server.url} (alerts: {server.url}/alerts), scraping the worker and sinks")
    try:
        yield server
        if sys.stdin.isatty():
            console.input(f"Press Enter to stop Prometheus ({server.url}) and end the demo ")
    finally:
        server.stop()


def _print_alerts(console: Console, server: LocalPrometheus) -> None:
    try:
        alerts = server.alerts()
    except MonitoringError as exc:
        console.print(f"[yellow]Prometheus did not list its alerts: {exc}[/]")
        return
    if not alerts:
        console.print("Prometheus: no alert pending or firing")
        return
    for alert in alerts:
        labels = alert["labels"]
        where = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in {"alertname", "severity"})
        console.print(f"Prometheus: {labels['alertname']} {alert['state']} ({where})")


@dataclass
class DemoStores:
    redis_url: str
    redis_prefix: str
    database_url: str
    embedded: bool


@contextlib.contextmanager
def demo_stores(settings: Settings, console: Console) -> Iterator[DemoStores]:
    """Redis and PostgreSQL for the demo: the configured ones when they answer (with a
    fresh `loyalty_demo` database and `loyalty-demo:` keys), else private ones from wheels."""
    with contextlib.ExitStack() as stack:
        redis_url = settings.redis_url
        embedded = False
        if not redis_reachable(redis_url):
            redis_url = stack.enter_context(EmbeddedRedis()).url
            embedded = True
        database_url = stack.enter_context(postgres_or_embedded(_with_database(settings.database_url, "loyalty_demo")))
        embedded = embedded or database_url != _with_database(settings.database_url, "loyalty_demo")
        stores = DemoStores(redis_url, "loyalty-demo:", database_url, embedded)
        asyncio.run(_fresh(stores))
        console.print(f"[bold]Redis[/] {redis_url} (keys {stores.redis_prefix}*), [bold]PostgreSQL[/] {database_url}")
        yield stores


def _with_database(dsn: str, database: str) -> str:
    return f"{dsn.rsplit('/', 1)[0]}/{database}"


async def _fresh(stores: DemoStores) -> None:
    """Each demo starts from empty stores, so its figures are its own."""
    redis = aioredis.from_url(stores.redis_url)
    try:
        keys = [key async for key in redis.scan_iter(f"{stores.redis_prefix}*", count=1000)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
    maintenance = await asyncpg.connect(_with_database(stores.database_url, "postgres"))
    try:
        await maintenance.execute("DROP DATABASE IF EXISTS loyalty_demo WITH (FORCE)")
    finally:
        await maintenance.close()


async def _inspect_stores(stores: DemoStores, web: str, summary: dict[str, Any]) -> dict[str, Any]:
    """What the sinks stored, once they have caught up with the topics."""
    redis = aioredis.from_url(stores.redis_url)
    found: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        connection = None
        while time.monotonic() < deadline:
            try:
                connection = connection or await asyncpg.connect(stores.database_url)
                stored = await connection.fetchval("SELECT count(DISTINCT receipt_id) FROM receipt_messages")
            except (OSError, asyncpg.PostgresError):
                stored = 0
            if stored >= summary["receipts_answered"]:
                break
            await asyncio.sleep(0.5)
        assert connection is not None
        for table in ("status_changes", "offer_triggers", "receipt_messages", "customers"):
            found[f"postgres.{table}"] = await connection.fetchval(f"SELECT count(*) FROM {table}")
        levels = await connection.fetch(
            "SELECT status_system, status, count(*) AS n FROM customer_statuses GROUP BY 1, 2 ORDER BY 1, 3 DESC"
        )
        found["customers_per_level"] = {f"{r['status_system']}:{r['status']}": r["n"] for r in levels}
        top = await connection.fetchval("SELECT customer_id FROM customers ORDER BY version DESC LIMIT 1")
        await connection.close()
        found["redis.customers"] = len(
            [k async for k in redis.scan_iter(f"{stores.redis_prefix}customer:*", count=1000)]
        )
        found["redis.receipt_messages"] = len(
            [k async for k in redis.scan_iter(f"{stores.redis_prefix}receipt-message:*", count=1000)]
        )
        async with ClientSession() as http, http.get(f"{web}/customers/{top}/status") as response:
            found["sample_status"] = await response.json(content_type=None)
    finally:
        await redis.aclose()
    return found


def _print_where_to_look(console: Console, stores: DemoStores, web_port: int) -> None:
    if stores.embedded:
        console.print("Redis and/or PostgreSQL were private instances started for this demo; they are gone now.")
        return
    console.print("[bold]Where to look[/] (the demo's data stays until the next demo):")
    console.print(f"  psql {stores.database_url} -c 'SELECT * FROM status_changes ORDER BY occurred_at DESC LIMIT 10'")
    console.print(f"  redis-cli -u {stores.redis_url} --scan --pattern '{stores.redis_prefix}customer:*' | head")


@dataclass
class Topics:
    receipts: str
    status_changes: str
    offer_triggers: str
    receipt_messages: str
    dead_letters: str


class Observed:
    """Figures over what the output reader has seen so far."""

    def __init__(self, reader: OutputReader, topics: Topics, stats: GeneratorStats) -> None:
        self.reader, self.topics, self.stats = reader, topics, stats

    def answered(self) -> int:
        return sum(1 for rid in self.reader.arrivals if rid in self.stats.sent_at)

    def unanswered(self) -> bool:
        # Every sale must be answered; a generated return may be refused (its original
        # may already be returned in full) and then gets a dead letter instead.
        return any(rid not in self.reader.arrivals for rid in self.stats.sent_at if "-R" not in rid)

    def latencies_ms(self) -> list[float]:
        sent = self.stats.sent_at
        return [(t - sent[rid]) * 1000 for rid, t in self.reader.arrivals.items() if rid in sent]

    def status_changes(self) -> Counter[str]:
        unique = {c["event_id"]: c for c in self.reader.records[self.topics.status_changes]}
        return Counter(f"{c['status_system']}:{c['direction']}:{c['current']}" for c in unique.values())

    def offers(self) -> Counter[str]:
        unique = {o["event_id"]: o for o in self.reader.records[self.topics.offer_triggers]}
        return Counter(o["offer_id"] for o in unique.values())

    def count(self, topic: str) -> int:
        return len(self.reader.records[topic])


async def _drive(
    console: Console,
    bootstrap: str,
    prefix: str,
    config: LoyaltyConfig,
    rate: float,
    customers: int,
    duration: float,
    sinks_port: int,
) -> dict[str, Any]:
    names = config.topics
    topics = Topics(
        *(
            prefix + n
            for n in (
                names.receipts,
                names.status_changes,
                names.offer_triggers,
                names.receipt_messages,
                names.dead_letters,
            )
        )
    )
    stats = GeneratorStats()
    reader = OutputReader(
        bootstrap, [topics.status_changes, topics.offer_triggers, topics.receipt_messages, topics.dead_letters]
    )
    await reader.start(WARMUP_TIMEOUT)
    try:
        await _warm_up(bootstrap, topics.receipts, config, reader)
        console.print("pipeline answered the warm-up receipt; sending traffic")
        seen = Observed(reader, topics, stats)
        # Sweep receipt times from the first of last month, so the demo crosses a month end.
        this_month = period_containing(datetime.now(UTC), PeriodKind.MONTH, config.timezone)
        last_month = period_containing(
            this_month.starts_at(config.timezone) - timedelta(seconds=1), PeriodKind.MONTH, config.timezone
        )
        started = time.monotonic()
        gen = asyncio.create_task(
            generate(
                bootstrap,
                topics.receipts,
                rate=rate,
                duration=duration,
                shape=TrafficShape(customers=customers),
                simulate_from=last_month.starts_at(config.timezone),
                stats=stats,
            )
        )
        with Live(_progress(seen, 0.0), console=console, refresh_per_second=2) as live:
            while not gen.done():
                await asyncio.sleep(0.5)
                live.update(_progress(seen, time.monotonic() - started))
            await gen
            sending_took = time.monotonic() - started
            # As long as answers keep coming: a worker behind the offered rate catches up, and
            # the summary shows by how much it fell behind.
            answered, quiet_since = seen.answered(), time.monotonic()
            while seen.unanswered() and time.monotonic() - quiet_since < DRAIN_TIMEOUT:
                await asyncio.sleep(0.5)
                live.update(_progress(seen, time.monotonic() - started))
                if seen.answered() > answered:
                    answered, quiet_since = seen.answered(), time.monotonic()
            last_answer = max((t for rid, t in reader.arrivals.items() if rid in stats.sent_at), default=started)
            processing_took = last_answer - started
            sinks_complete = await _sinks_complete(f"http://127.0.0.1:{sinks_port}/health")
    finally:
        await reader.stop()
    latencies = seen.latencies_ms()
    answered = seen.answered()
    return {
        "receipts_sent": stats.sent,
        "unique_receipts": len(stats.sent_at),
        "receipts_answered": answered,
        "messages": seen.count(topics.receipt_messages),
        "dead_letters": seen.count(topics.dead_letters),
        "offers": dict(sorted(seen.offers().items())),
        "status_changes": dict(sorted(seen.status_changes().items())),
        "offered_rate_per_s": rate,
        "sending_seconds": round(sending_took, 1),
        "throughput_per_s": round(answered / processing_took, 1) if processing_took else 0.0,
        "sinks_complete_after_last_answer_s": (
            round(sinks_complete - last_answer, 2) if sinks_complete is not None else None
        ),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50), 1),
            "p95": round(percentile(latencies, 0.95), 1),
            "p99": round(percentile(latencies, 0.99), 1),
            "max": round(max(latencies, default=float("nan")), 1),
        },
    }


async def _sinks_complete(health_url: str) -> float | None:
    """When the sinks process last said it had written everything (both sinks' lag 0), or None
    if it did not within DRAIN_TIMEOUT."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    async with ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                async with http.get(health_url) as response:
                    body = await response.json(content_type=None)
                if body.get("sinks") and all(sink["lag"] == 0 for sink in body["sinks"].values()):
                    return time.monotonic()
            await asyncio.sleep(0.05)
    return None


async def _warm_up(bootstrap: str, topic: str, config: LoyaltyConfig, reader: OutputReader) -> None:
    """Sends anonymous receipts until one is answered: the worker has joined and recovered."""
    deadline = time.monotonic() + WARMUP_TIMEOUT
    while time.monotonic() < deadline:
        receipt_id = f"warmup-{uuid.uuid4().hex[:8]}"
        receipt = {
            "receipt_id": receipt_id,
            "type": "sale",
            "card_number": "0",
            "pos_id": "warmup",
            "issued_at": datetime.now(UTC).isoformat(),
            "currency": config.currency,
            "total": "0.00",
        }
        await produce(bootstrap, topic, [(b"0", json.dumps(receipt).encode())])
        with contextlib.suppress(TimeoutError):
            await reader.wait_for(lambda rid=receipt_id: rid in reader.arrivals, timeout=5.0)
            return
    raise RuntimeError(f"the pipeline did not answer in {WARMUP_TIMEOUT:.0f}s; see the worker log")


def _progress(seen: Observed, elapsed: float) -> Table:
    answered = seen.answered()
    latencies = seen.latencies_ms()

    def rate(n: int) -> str:
        return f"{n:,}  ({n / elapsed:,.0f}/s)" if elapsed > 0 else f"{n:,}"

    table = Table(title=f"loyalty pipeline: live, {elapsed:.0f} s", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("receipts sent", rate(seen.stats.sent))
    table.add_row("receipts answered", rate(answered))
    table.add_row("status changes", f"{seen.count(seen.topics.status_changes):,}")
    table.add_row("offer triggers", f"{seen.count(seen.topics.offer_triggers):,}")
    table.add_row("dead letters", f"{seen.count(seen.topics.dead_letters):,}")
    table.add_row(
        "receipt → message p50 / p99",
        f"{percentile(latencies, 0.5):,.0f} / {percentile(latencies, 0.99):,.0f} ms",
    )
    return table


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    _print_figures(console, summary)
    _print_what_held_it_back(console, summary)
    stores = summary.get("stores")
    if stores:
        table = Table(title="what the sinks stored", show_header=False)
        table.add_column("where")
        table.add_column("count", justify="right")
        for key in (
            "postgres.status_changes",
            "postgres.offer_triggers",
            "postgres.receipt_messages",
            "postgres.customers",
            "redis.customers",
            "redis.receipt_messages",
        ):
            table.add_row(key, f"{stores[key]:,}")
        for key, count in stores["customers_per_level"].items():
            table.add_row(f"customers at {key}", f"{count:,}")
        console.print(table)
        console.print("GET /customers/{id}/status of the most active customer:")
        console.print_json(data=stores["sample_status"])


def _print_what_held_it_back(console: Console, summary: dict[str, Any]) -> None:
    """A run that did not keep up says where the receipts waited, from its own figures."""
    # Against the distinct receipts sent per second: a POS retry needs no second answer.
    offered = summary["unique_receipts"] / summary["sending_seconds"] if summary["sending_seconds"] else 0.0
    done = summary["throughput_per_s"]
    if done >= 0.95 * offered:
        return
    complete = summary.get("sinks_complete_after_last_answer_s")
    sinks = "" if complete is None else f"; the sinks held everything {complete:.2f} s after its last answer"
    console.print(
        f"[bold]Did not keep up:[/] the worker answered {done:,.0f} receipts/s against {offered:,.0f} distinct "
        f"ones sent, so receipts queued in front of it (p50 {summary['latency_ms']['p50']:,.0f} ms){sinks}. "
        "`loyalty demo --rate N` offers less."
    )


def _print_figures(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="loyalty demo: summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("receipts sent (incl. POS retries)", f"{summary['receipts_sent']:,}")
    table.add_row("unique receipts", f"{summary['unique_receipts']:,}")
    table.add_row("receipts answered with a message", f"{summary['receipts_answered']:,}")
    table.add_row("receipt messages (incl. re-sent)", f"{summary['messages']:,}")
    table.add_row("dead letters", f"{summary['dead_letters']:,}")
    table.add_row("offered load, receipts/s", f"{summary['offered_rate_per_s']:,.0f}")
    table.add_row("throughput, receipts/s", f"{summary['throughput_per_s']:,.0f}")
    complete = summary.get("sinks_complete_after_last_answer_s")
    table.add_row("sinks hold everything, s after the last answer", "-" if complete is None else f"{complete:.2f}")
    lat = summary["latency_ms"]
    table.add_row(
        "receipt → message latency p50 / p95 / p99 / max, ms",
        f"{lat['p50']} / {lat['p95']} / {lat['p99']} / {lat['max']}",
    )
    for offer, count in sorted(summary["offers"].items()):
        table.add_row(f"offer {offer}", f"{count:,}")
    for key, count in summary["status_changes"].items():
        system, direction, level = key.split(":")
        table.add_row(f"status change {system} {direction} → {level}", f"{count:,}")
    console.print(table)
