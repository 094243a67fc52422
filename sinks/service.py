"""The sinks as a service: their runners, health and metrics, inside a worker or alone.

`loyalty sinks` runs `run_alone`: the runners with a small HTTP server of their own
(`GET /health`, `GET /metrics`), the production shape, so the pipeline's worker never
waits on its history store and operators scale and restart the two apart. A worker
started with `LOYALTY_SINKS` runs the same `Sinks` as a task of its own and serves their
health and metrics on its own port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaClient

from sinks.base import Sink
from sinks.metrics import SinkMetrics
from sinks.postgres import PostgresSink
from sinks.redis import RedisSink
from sinks.runner import SinkRunner

logger = logging.getLogger(__name__)

KNOWN_SINKS = ("redis", "postgres")

#: How often the customers-per-level gauge is refreshed from PostgreSQL.
LEVELS_INTERVAL = 15.0
#: How long stopping runners may take to finish their batches in hand before they are cancelled
#: (a batch not committed is read again by the next runner: nothing is lost).
STOP_TIMEOUT = 10.0

HealthCheck = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class SinkSettings:
    """What the sink runners need to know, read once from the settings and the configuration."""

    bootstrap: str
    #: The runners' consumer groups are `{app_id}-sink-{name}`.
    app_id: str
    #: Output topic name -> the record kind it carries.
    topics: Mapping[str, str]
    dead_letters: str
    redis_url: str
    redis_prefix: str
    database_url: str
    fetch_max_wait_ms: int
    session_timeout_ms: int
    max_batch: int


class BrokerCheck:
    """Answers whether the broker gives us metadata now."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._client: AIOKafkaClient | None = None

    async def __call__(self) -> bool:
        try:
            if self._client is None:
                client = AIOKafkaClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
                await asyncio.wait_for(client.bootstrap(), 3.0)
                self._client = client
            await asyncio.wait_for(self._client.fetch_all_metadata(), 3.0)
            return True
        except Exception:  # any failure means "not healthy now"; the reason is logged
            logger.warning("broker health check failed", exc_info=True)
            return False

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def make_sink(name: str, settings: SinkSettings) -> Sink:
    if name == "redis":
        return RedisSink(settings.redis_url, prefix=settings.redis_prefix)
    if name == "postgres":
        return PostgresSink(settings.database_url)
    raise ValueError(f"unknown sink {name!r}; known: {', '.join(KNOWN_SINKS)}")


class Sinks:
    """The named sinks, each fed by a runner in its own consumer group, and what they report."""

    def __init__(self, names: Sequence[str], settings: SinkSettings, metrics: SinkMetrics) -> None:
        unknown = [name for name in names if name not in KNOWN_SINKS]
        if unknown:
            raise ValueError(f"unknown sink(s) {', '.join(unknown)}; known: {', '.join(KNOWN_SINKS)}")
        self.metrics = metrics
        self.sinks = {name: make_sink(name, settings) for name in dict.fromkeys(names)}
        self.runners = {
            name: SinkRunner(
                sink,
                bootstrap=settings.bootstrap,
                group_id=f"{settings.app_id}-sink-{name}",
                topics=settings.topics,
                metrics=metrics,
                max_batch=settings.max_batch,
                fetch_max_wait_ms=settings.fetch_max_wait_ms,
                session_timeout_ms=settings.session_timeout_ms,
                dead_letters=settings.dead_letters,
            )
            for name, sink in self.sinks.items()
        }
        self._levels_seen: set[tuple[str, str]] = set()

    @property
    def checks(self) -> dict[str, HealthCheck]:
        """Each store's health check, by sink name."""
        return {name: sink.healthy for name, sink in self.sinks.items()}

    def progress(self) -> dict[str, dict[str, Any]]:
        """Per sink: up, records not yet written, the age of the oldest of them."""
        return {name: runner.progress().as_json() for name, runner in self.runners.items()}

    async def run(self) -> None:
        """Runs every runner until `stop()` (each finishes or abandons the batch in hand) or
        until cancelled (a batch not committed is read again by the next runner: nothing is lost)."""
        levels = None
        postgres = self.sinks.get("postgres")
        if isinstance(postgres, PostgresSink):
            levels = asyncio.create_task(self._count_levels(postgres), name="sink-levels")
        try:
            await asyncio.gather(*(runner.run() for runner in self.runners.values()))
        finally:
            if levels is not None:
                levels.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await levels

    async def stop(self) -> None:
        for runner in self.runners.values():
            await runner.stop()

    async def _count_levels(self, postgres: PostgresSink) -> None:
        while True:
            await asyncio.sleep(LEVELS_INTERVAL)
            try:
                counts = await postgres.customers_per_level()
            except Exception:
                logger.debug("customers per level unavailable", exc_info=True)
                continue
            for gone in self._levels_seen - counts.keys():
                self.metrics.customers.labels(*gone).set(0)
            for (system, level), count in counts.items():
                self.metrics.customers.labels(system, level).set(count)
            self._levels_seen |= counts.keys()


async def health(checks: Mapping[str, HealthCheck], sinks: Sinks | None) -> tuple[int, dict[str, Any]]:
    """`GET /health`'s status code and body: each connection up or down (503 when one is down)
    and, per sink, what it has not written yet."""
    results = await asyncio.gather(*(check() for check in checks.values()))
    body: dict[str, Any] = {"status": "ok" if all(results) else "degraded"}
    body |= {name: "up" if ok else "down" for name, ok in zip(checks, results, strict=True)}
    if sinks is not None and sinks.runners:
        body["sinks"] = sinks.progress()
    return (200 if all(results) else 503), body


def web_app(sinks: Sinks, checks: Mapping[str, HealthCheck]) -> web.Application:
    async def get_health(request: web.Request) -> web.Response:
        status, body = await health(checks, sinks)
        return web.json_response(body, status=status)

    async def get_metrics(request: web.Request) -> web.Response:
        return web.Response(body=sinks.metrics.exposition(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    return app


async def run_alone(names: Sequence[str], settings: SinkSettings, *, host: str, port: int) -> None:
    """`loyalty sinks`: the sinks and their HTTP server until SIGTERM or SIGINT."""
    metrics = SinkMetrics()
    metrics.start_at_zero(names)  # a dashboard draws 0 errors, not a blank panel
    sinks = Sinks(names, settings, metrics)
    broker = BrokerCheck(settings.bootstrap)
    server = web.AppRunner(web_app(sinks, {"broker": broker, **sinks.checks}), access_log=None)
    await server.setup()
    await web.TCPSite(server, host, port).start()
    logger.info("sinks %s serving /health and /metrics on %s:%d", ", ".join(sinks.sinks), host, port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    running = asyncio.create_task(sinks.run(), name="sinks")
    stop = asyncio.create_task(stopping.wait(), name="sinks-stop")
    try:
        await asyncio.wait([running, stop], return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()  # a runner that failed: the process exits with its error
    finally:
        stop.cancel()
        if not running.done():
            logger.info("stopping the sinks")
            await sinks.stop()
            _, pending = await asyncio.wait([running], timeout=STOP_TIMEOUT)
            if pending:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
        await server.cleanup()
        await broker.close()
