"""Running and watching a pipeline from outside: worker processes and output readers.

The demo and the integration tests use these, so both see the pipeline exactly
as a POS integration does: through its topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


def worker_env(bootstrap: str, prefix: str, data_dir: str, web_port: int, **overrides: str) -> dict[str, str]:
    """The environment of a `loyalty worker` in its own namespace (topic prefix, group, data), sinks off."""
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP=bootstrap,
        LOYALTY_TOPIC_PREFIX=prefix,
        LOYALTY_APP_ID=f"{prefix}app",
        LOYALTY_DATA_DIR=data_dir,
        WEB_PORT=str(web_port),
        LOG_LEVEL="info",
        LOYALTY_SINKS="",
    )
    env.update(overrides)
    return env


class WorkerProcess:
    """`loyalty worker` as a child process, with its output in a log file."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "streams.cli", "worker"]

    def start(self) -> Self:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def exit_code(self) -> int | None:
        """None while the worker runs (or before it started)."""
        return self.process.poll() if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """Stops the worker the way an orchestrator does: SIGTERM, then SIGKILL."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def kill(self) -> None:
        """Stops the worker the way a crash does."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


P = TypeVar("P", bound=WorkerProcess)


@contextlib.contextmanager
def running(process: P) -> Iterator[P]:
    """Starts the process; stops it (SIGTERM, then SIGKILL) when the block ends."""
    process.start()
    try:
        yield process
    finally:
        process.stop()


class SinksProcess(WorkerProcess):
    """`loyalty sinks` as a child process, with its output in a log file."""

    def __init__(self, env: Mapping[str, str], log_path: Path, only: str | None = None) -> None:
        super().__init__(env, log_path)
        self.only = only

    def command(self) -> list[str]:
        return [sys.executable, "-m", "streams.cli", "sinks", *(["--only", self.only] if self.only else [])]


async def wait_for_topics(bootstrap: str, topics: list[str], timeout: float) -> dict[str, set[int]]:
    """Waits until every topic exists with partitions; returns their partitions."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        deadline = time.monotonic() + timeout
        while True:
            metadata = await client.fetch_all_metadata()
            found = {t: metadata.partitions_for_topic(t) or set() for t in topics}
            if all(found.values()):
                return found
            if time.monotonic() > deadline:
                missing = [t for t, parts in found.items() if not parts]
                raise TimeoutError(f"topics {missing} did not appear in {timeout:.0f}s")
            await asyncio.sleep(0.25)
    finally:
        await client.close()


@dataclass
class OutputReader:
    """Reads output topics from their beginning into memory, keeping arrival times."""

    bootstrap: str
    topics: list[str]
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    arrivals: dict[str, float] = field(default_factory=dict)  # receipt-message receipt_id -> first arrival
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 60.0) -> OutputReader:
        partitions = await wait_for_topics(self.bootstrap, self.topics, timeout)
        self.records = {t: [] for t in self.topics}
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, fetch_max_wait_ms=10, enable_auto_commit=False
        )
        await self._consumer.start()
        assigned = [TopicPartition(t, p) for t, parts in partitions.items() for p in sorted(parts)]
        self._consumer.assign(assigned)
        await self._consumer.seek_to_beginning(*assigned)
        self._task = asyncio.create_task(self._read())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for tp, batch in batches.items():
                for record in batch:
                    value = json.loads(record.value)
                    value["_key"] = record.key.decode(errors="backslashreplace") if record.key is not None else None
                    self.records[tp.topic].append(value)
                    if "receipt_id" in value and "lines" in value:
                        self.arrivals.setdefault(value["receipt_id"], now)

    async def wait_for(self, predicate: Any, timeout: float = 60.0, what: str = "records") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self._task is not None and self._task.done():
                self._task.result()  # the reader died: raise its error rather than wait in vain
                raise RuntimeError("the output reader stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; {await self.progress()}")
            await asyncio.sleep(0.05)

    async def progress(self) -> str:
        """Where the reader stands against each partition's end, to tell a silent worker from a stuck reader."""
        if self._consumer is None:
            return "the reader was never started"
        assigned = sorted(self._consumer.assignment())
        ends = await self._consumer.end_offsets(assigned)
        behind = [f"{tp.topic}[{tp.partition}] at {await self._consumer.position(tp)} of {ends[tp]}" for tp in assigned]
        return "reader positions: " + ", ".join(behind)


async def produce(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes]], partition: int | None = None
) -> None:
    """Sends the records, keyed, to the partitions Kafka's default partitioner gives them (or all to `partition`)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, key=key, value=value, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
