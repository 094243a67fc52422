"""Each alert of deploy/prometheus/alerts.yml, made to fire and to resolve through a real Prometheus.

Every test provokes its alert's cause in a running pipeline: a worker stopped, a
worker whose broker stopped, a flood of malformed receipts, a worker starved of
CPU under load, PostgreSQL stopped, a close walk that cannot move. Prometheus
runs through the shipped prometheus.yml (targets rewritten to the worker's port,
scraping and evaluating every second) with the tests' copy of the rules: every
`for:` and range window shortened (tests/prometheus.py), thresholds as shipped
unless TEST_THRESHOLDS says otherwise.
Each test sees its alert pending (where the rule has a `for:`), then firing, then,
once the cause is gone, neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from config.loading import DEFAULT_CONFIG
from streams.local.broker import EmbeddedBroker
from streams.local.postgres import EmbeddedPostgres
from streams.local.probe import OutputReader, WorkerProcess, produce
from streams.local.service import free_port
from streams.metrics import Metrics
from tests.conftest import PipelineUnderTest
from tests.integration.test_period_close import same_partition
from tests.integration.test_pipeline import answered, receipt, send
from tests.prometheus import PrometheusUnderTest, alert_names, rules_for_tests, shipped_rules

pytestmark = pytest.mark.integration

#: The test that provokes each alert; a new alert without one fails `test_every_alert_is_proven`.
PROVEN = {
    "LoyaltyProcessDown": "test_a_stopped_worker_is_down_until_it_runs_again",
    "LoyaltyWorkerStalled": "test_a_worker_cut_off_from_its_broker_is_stalled_until_it_is_back",
    "LoyaltyDeadLetters": "test_a_flood_of_malformed_receipts_raises_dead_letters",
    "LoyaltyConsumerLagGrowing": "test_a_starved_worker_falls_behind_and_catches_up",
    "LoyaltyReceiptLatencyHigh": "test_a_starved_worker_falls_behind_and_catches_up",
    "LoyaltySinkDown": "test_postgres_stopped_raises_the_sink_alerts",
    "LoyaltySinkBehind": "test_postgres_stopped_raises_the_sink_alerts",
    "LoyaltyCloseWalkNotFinished": "test_a_close_walk_that_cannot_move_is_reported_until_it_finishes",
}

#: Thresholds that are durations of minutes in production, seconds here.
TEST_THRESHOLDS = {"LoyaltySinkBehind": ("> 300", "> 5")}


def test_every_alert_is_proven() -> None:
    assert set(PROVEN) == set(alert_names(shipped_rules()))
    assert all(name in globals() for name in PROVEN.values())


@pytest.fixture
async def alerting(tmp_path: Path) -> AsyncIterator[Callable[[int], Awaitable[PrometheusUnderTest]]]:
    """Starts a Prometheus with the tests' copy of the rules, scraping a worker on the given port."""
    servers: list[PrometheusUnderTest] = []

    async def start(worker_port: int) -> PrometheusUnderTest:
        server = PrometheusUnderTest(
            tmp_path / f"prometheus-{len(servers)}",
            {"loyalty-worker": [f"127.0.0.1:{worker_port}"]},
            rules=rules_for_tests(shipped_rules(), TEST_THRESHOLDS),
            scrape_interval="1s",
            evaluation_interval="1s",
            only_these_jobs=True,
        )
        servers.append(server)
        return await server.start()

    yield start
    for server in servers:
        await server.stop()


async def fires_and_resolves_when(
    server: PrometheusUnderTest,
    name: str,
    cause: Callable[[], Awaitable[None]],
    remedy: Callable[[], Awaitable[None]],
    labels: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> None:
    """Provokes `cause`, sees the alert pending (if its rule waits) and firing, applies `remedy`,
    and sees it resolve."""
    assert await server.alert_states(name, labels) == set(), f"{name} is active before its cause"
    await cause()
    seen = await server.wait_for_alert(name, "firing", labels=labels, timeout=timeout)
    if rule_waits(name):
        assert "pending" in seen, f"{name} fired without being pending first: {seen}"
    await remedy()
    await server.wait_for_alert(name, "inactive", labels=labels, timeout=timeout)


def rule_waits(name: str) -> bool:
    return any("for" in r for g in shipped_rules()["groups"] for r in g["rules"] if r["alert"] == name)


async def scraped(server: PrometheusUnderTest, worker: WorkerProcess) -> None:
    """Waits until Prometheus scrapes the worker and no longer reports it down (it was, until it started)."""
    target = f'up{{job="loyalty-worker", instance="127.0.0.1:{worker.env["WEB_PORT"]}"}}'
    await server.wait_for_value(target, lambda up: up == 1, what="the worker scraped")
    await server.wait_for_alert("LoyaltyProcessDown", "inactive", timeout=60)


def november(n: int, customer: str, total: str = "12.00") -> dict[str, Any]:
    return receipt(f"AL-{n}", customer, f"2026-11-{1 + n % 20:02d}T12:00:00+01:00", total)


class Traffic:
    """Receipts sent at `rate` a second, in batches every tenth of a second, until stopped."""

    def __init__(self, pipeline: PipelineUnderTest, rate: float, customers: int = 500) -> None:
        self.pipeline, self.rate, self.customers = pipeline, rate, customers
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Traffic:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.pipeline.bootstrap, linger_ms=5)
        await producer.start()
        topic = self.pipeline.topic("receipts")
        owed = 0.0
        try:
            while True:
                owed += self.rate / 10
                while owed >= 1:
                    owed -= 1
                    value = november(self.sent, f"C-T{self.sent % self.customers}")
                    value["receipt_id"] = f"TR-{self.sent}"
                    await producer.send(topic, key=value["customer_id"].encode(), value=json.dumps(value).encode())
                    self.sent += 1
                await producer.flush()
                await asyncio.sleep(0.1)
        finally:
            await producer.stop()


class Starved:
    """Lets a process run `share` of the time, in slices of `period` seconds: what a CPU quota
    (CFS bandwidth control) does to a container that needs more."""

    def __init__(self, pid: int, share: float, period: float = 0.5) -> None:
        self.pid, self.share, self.period = pid, share, period
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="starve", daemon=True)

    def _run(self) -> None:
        try:
            while not self._done.wait(self.period * self.share):
                os.kill(self.pid, signal.SIGSTOP)
                self._done.wait(self.period * (1 - self.share))
                os.kill(self.pid, signal.SIGCONT)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)

    def start(self) -> Starved:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def pid_of(worker: WorkerProcess) -> int:
    assert worker.process is not None
    return worker.process.pid


@contextlib.contextmanager
def resumed_in_the_end(worker: WorkerProcess) -> Iterator[None]:
    """A worker left stopped would outlive the test: SIGCONT whatever happens."""
    try:
        yield
    finally:
        if worker.running:
            os.kill(pid_of(worker), signal.SIGCONT)


# ---------------------------------------------------------------------------- the alerts


async def test_a_stopped_worker_is_down_until_it_runs_again(
    pipeline: PipelineUnderTest, outputs: OutputReader, alerting: Callable[[int], Awaitable[PrometheusUnderTest]]
) -> None:
    port = free_port()
    server = await alerting(port)
    worker = pipeline.start_worker(WEB_PORT=str(port))
    await outputs.start()
    await send(pipeline, [november(0, "C-S1")])
    await answered(outputs, ["AL-0"])
    await scraped(server, worker)

    async def stop() -> None:
        os.kill(pid_of(worker), signal.SIGSTOP)

    async def resume() -> None:
        os.kill(pid_of(worker), signal.SIGCONT)

    with resumed_in_the_end(worker):
        await fires_and_resolves_when(
            server, "LoyaltyProcessDown", stop, resume, labels={"instance": f"127.0.0.1:{port}"}
        )
    # Running again, it answers receipts again.
    await send(pipeline, [november(1, "C-S1")])
    await answered(outputs, ["AL-1"])


async def test_a_flood_of_malformed_receipts_raises_dead_letters(
    pipeline: PipelineUnderTest, outputs: OutputReader, alerting: Callable[[int], Awaitable[PrometheusUnderTest]]
) -> None:
    port = free_port()
    server = await alerting(port)
    worker = pipeline.start_worker(WEB_PORT=str(port))
    await outputs.start()
    await send(pipeline, [november(0, "C-D1")])
    await answered(outputs, ["AL-0"])
    await scraped(server, worker)
    receipts = pipeline.topic("receipts")

    async def flood() -> None:
        bad = [b"{not json", b"\xff\xfe", b"[]", b'{"receipt_id": "X"}']
        bad.append(json.dumps(november(9, "C-D1", total="-5.00")).encode())
        await produce(pipeline.bootstrap, receipts, [(b"C-D1", bad[n % len(bad)]) for n in range(500)])

    async def stop_the_flood() -> None:
        # Nothing more to do: the flood is over, and the window it is counted in moves on.
        await send(pipeline, [november(1, "C-D1")])

    await fires_and_resolves_when(server, "LoyaltyDeadLetters", flood, stop_the_flood, labels={"topic": receipts})
    await answered(outputs, ["AL-1"])


async def test_a_starved_worker_falls_behind_and_catches_up(
    pipeline: PipelineUnderTest, outputs: OutputReader, alerting: Callable[[int], Awaitable[PrometheusUnderTest]]
) -> None:
    port = free_port()
    server = await alerting(port)
    worker = pipeline.start_worker(WEB_PORT=str(port))
    await outputs.start()
    await send(pipeline, [november(0, "C-L1")])
    await answered(outputs, ["AL-0"])
    await scraped(server, worker)
    # A 25th of the time at 800 receipts/s asks for 20,000 a second of the worker's full pace:
    # more than one worker here has (`make bench` drains 7,000-13,000 a second), so the backlog
    # grows, however fast the hour.
    starved = Starved(pid_of(worker), share=0.04)
    both = ("LoyaltyConsumerLagGrowing", "LoyaltyReceiptLatencyHigh")

    async with Traffic(pipeline, rate=800, customers=20_000) as traffic:
        with resumed_in_the_end(worker):
            starved.start()
            try:
                seen = await asyncio.gather(*(server.wait_for_alert(n, "firing", timeout=180) for n in both))
            finally:
                starved.stop()
        assert all("pending" in states for states in seen), dict(zip(both, seen, strict=True))
        traffic.rate = 30  # the tills go on, at a rate the worker keeps up with
        await asyncio.gather(*(server.wait_for_alert(n, "inactive", timeout=180) for n in both))
        lag = await server.query("sum(loyalty_consumer_lag)")
        assert float(lag[0]["value"][1]) < 500, lag


@pytest.mark.parametrize("alert", ["LoyaltySinkDown", "LoyaltySinkBehind"])
async def test_postgres_stopped_raises_the_sink_alerts(
    alert: str,
    pipeline: PipelineUnderTest,
    outputs: OutputReader,
    alerting: Callable[[int], Awaitable[PrometheusUnderTest]],
) -> None:
    if alert == "LoyaltySinkBehind" and "loyalty_sink_oldest_unwritten_seconds" not in {
        family.name for family in Metrics().registry.collect()
    }:
        pytest.skip("loyalty_sink_oldest_unwritten_seconds is not exported yet: it comes with the sinks process (#29)")
    postgres = EmbeddedPostgres().start()
    try:
        port = free_port()
        server = await alerting(port)
        worker = pipeline.start_worker(
            WEB_PORT=str(port), LOYALTY_SINKS="postgres", DATABASE_URL=postgres.dsn("loyalty")
        )
        await outputs.start()
        await send(pipeline, [november(0, "C-P1")])
        await answered(outputs, ["AL-0"])
        await scraped(server, worker)
        await server.wait_for_value('loyalty_sink_up{sink="postgres"}', lambda up: up == 1, what="the sink writing")

        async with Traffic(pipeline, rate=20):

            async def stop() -> None:
                await asyncio.to_thread(postgres.stop)

            async def start() -> None:
                await asyncio.to_thread(postgres.start)

            await fires_and_resolves_when(server, alert, stop, start, labels={"sink": "postgres"})
        await server.wait_for_value('loyalty_sink_up{sink="postgres"}', lambda up: up == 1, what="the sink back")
    finally:
        postgres.close()


async def test_a_close_walk_that_cannot_move_is_reported_until_it_finishes(
    pipeline: PipelineUnderTest, outputs: OutputReader, alerting: Callable[[int], Awaitable[PrometheusUnderTest]]
) -> None:
    port = free_port()
    server = await alerting(port)
    gold, silver, buyer = same_partition(3, partition=2)
    october = [
        *(receipt(f"WG-{n}", gold, f"2026-10-0{n}T12:00:00+02:00", "60.00") for n in range(1, 5)),
        receipt("WS-1", silver, "2026-10-11T12:00:00+02:00", "75.00"),
    ]
    starts_the_walk = receipt("WY-1", buyer, "2026-11-02T09:00:00+01:00", "10.00")
    # Walks paced so slowly that they never move: a walk that does not finish.
    stuck = pipeline.start_worker(WEB_PORT=str(port), LOYALTY_WALK_EVERY="1e9", LOYALTY_WALK_NUDGE_EVERY="1e9")
    await outputs.start()
    await send(pipeline, october)
    await answered(outputs, [r["receipt_id"] for r in october])
    await scraped(server, stuck)
    remaining = 'loyalty_close_walk_remaining{partition="2"}'

    async def walk_starts() -> None:
        await send(pipeline, [starts_the_walk])
        await answered(outputs, ["WY-1"])
        await server.wait_for_value(remaining, lambda left: left > 0, what="a walk under way")

    async def worker_at_normal_pace() -> None:
        stuck.stop()
        pipeline.start_worker(WEB_PORT=str(port))
        # The frontier it restores says the walk is not done: the partition's next input resumes it.
        await send(pipeline, [receipt("WY-2", buyer, "2026-11-03T09:00:00+01:00", "10.00")])
        await answered(outputs, ["WY-2"])
        await server.wait_for_value(remaining, lambda left: left == 0, what="the walk finished")

    await fires_and_resolves_when(
        server, "LoyaltyCloseWalkNotFinished", walk_starts, worker_at_normal_pace, labels={"partition": "2"}
    )


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    """A broker of this test's own, which it may stop without stopping the others' tests."""
    with EmbeddedBroker() as broker:
        yield broker


async def test_a_worker_cut_off_from_its_broker_is_stalled_until_it_is_back(
    own_broker: EmbeddedBroker, alerting: Callable[[int], Awaitable[PrometheusUnderTest]], tmp_path: Path
) -> None:
    # A worker that runs and answers /metrics but processes nothing: its broker stopped
    # (SIGSTOP: connections stay open, nothing answers). Its heartbeat is the idle ticks
    # each partition sends itself through the broker, every `idle_close_after`, here 2 s.
    config_path = tmp_path / "loyalty.yaml"
    config_path.write_text(
        DEFAULT_CONFIG.read_text(encoding="utf-8").replace("idle_close_after: 5m", "idle_close_after: 2s")
    )
    pipeline = PipelineUnderTest(own_broker.bootstrap, f"t{uuid.uuid4().hex[:8]}-", tmp_path)
    port = free_port()
    server = await alerting(port)
    worker = pipeline.start_worker(WEB_PORT=str(port), LOYALTY_CONFIG=str(config_path))
    outputs = OutputReader(pipeline.bootstrap, [pipeline.topic("receipt-messages")])
    try:
        await outputs.start()
        await send(pipeline, [november(0, "C-B1")])
        await answered(outputs, ["AL-0"])
        await scraped(server, worker)
        await server.wait_for_value(
            "sum(loyalty_processing_seconds_count)", lambda taken: taken > 4, what="idle ticks processed"
        )
        broker = own_broker.pid
        assert broker is not None

        async def broker_stops() -> None:
            os.kill(broker, signal.SIGSTOP)

        async def broker_resumes() -> None:
            os.kill(broker, signal.SIGCONT)

        try:
            await fires_and_resolves_when(
                server, "LoyaltyWorkerStalled", broker_stops, broker_resumes, labels={"instance": f"127.0.0.1:{port}"}
            )
        finally:
            os.kill(broker, signal.SIGCONT)
        assert worker.running, worker.log_tail()
        await send(pipeline, [november(1, "C-B1")])
        await answered(outputs, ["AL-1"])
    finally:
        await outputs.stop()
        worker.stop(timeout=15)
