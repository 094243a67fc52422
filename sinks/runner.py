"""Feeds one sink from the output topics, in a consumer group of its own.

The sink's consumer group is the buffer: a batch is fetched (at most
`max_batch` records, the bounded buffer), written with retries and backoff
until it succeeds, and only then are the offsets committed. A sink that is
down therefore stops its own consumption and nothing else: the receipts, the
Kafka outputs and the other sinks go on, and the output topics hold what it has
not written yet. When it returns it catches up from its committed offsets; the
writes are idempotent, so a batch written twice (after a crash between write
and commit) is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from sinks.base import Sink, SinkRecord, SinkUnavailable
from streams.metrics import Metrics

logger = logging.getLogger(__name__)

#: A sink may be down for hours; its consumer must not be thrown out of the group meanwhile.
MAX_POLL_INTERVAL_MS = 24 * 3600 * 1000


class Backoff:
    """Exponential backoff: 0.1 s, 0.2 s, ... up to `ceiling`."""

    def __init__(self, first: float = 0.1, ceiling: float = 5.0) -> None:
        self.first, self.ceiling = first, ceiling
        self.next = first

    def delay(self, suggested: float | None = None) -> float:
        delay = suggested if suggested is not None else self.next
        self.next = min(self.next * 2, self.ceiling)
        return delay

    def reset(self) -> None:
        self.next = self.first


class SinkRunner:
    def __init__(
        self,
        sink: Sink,
        *,
        bootstrap: str,
        group_id: str,
        topics: Mapping[str, str],  # topic name -> record kind
        metrics: Metrics,
        max_batch: int = 1000,
        fetch_max_wait_ms: int = 10,
        session_timeout_ms: int = 10_000,
    ) -> None:
        self.sink = sink
        self.topics = {name: kind for name, kind in topics.items() if kind in sink.kinds}
        self.metrics = metrics
        self.max_batch = max_batch
        self._consumer_options = {
            "bootstrap_servers": bootstrap,
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": fetch_max_wait_ms,
            "max_poll_records": max_batch,
            "max_poll_interval_ms": MAX_POLL_INTERVAL_MS,
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": max(session_timeout_ms // 4, 250),
        }
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self.written = 0

    async def run(self) -> None:
        """Runs until `stop()`; never gives up on the sink."""
        name = self.sink.name
        await self._start_sink()
        consumer = self._consumer = AIOKafkaConsumer(*self.topics, **self._consumer_options)
        await consumer.start()
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=self.max_batch)
                records = [
                    SinkRecord(
                        self.topics[tp.topic],
                        record.key.decode() if record.key is not None else None,
                        orjson.loads(record.value),
                    )
                    for tp, batch in batches.items()
                    for record in batch
                ]
                if records:
                    self.metrics.sink_buffer.labels(name).set(len(records))
                    await self._write(records)
                    self.metrics.sink_buffer.labels(name).set(0)
                    await self._commit()
                await self._measure_lag()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await self.sink.stop()

    async def stop(self) -> None:
        self._stopping.set()

    async def _start_sink(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self.sink.start()
                self.metrics.sink_up.labels(self.sink.name).set(1)
                return
            except SinkUnavailable as exc:
                self.metrics.sink_up.labels(self.sink.name).set(0)
                self.metrics.sink_errors.labels(self.sink.name).inc()
                delay = backoff.delay(exc.retry_after)
                logger.warning("sink %s cannot start (%s); retrying in %.1fs", self.sink.name, exc, delay)
                await asyncio.sleep(delay)

    async def _write(self, records: list[SinkRecord]) -> None:
        name = self.sink.name
        backoff = Backoff()
        attempt = 0
        while True:
            try:
                await self.sink.write(records)
                await self.sink.flush()
            except SinkUnavailable as exc:
                attempt += 1
                self.metrics.sink_up.labels(name).set(0)
                self.metrics.sink_errors.labels(name).inc()
                self.metrics.sink_retries.labels(name).inc()
                delay = backoff.delay(exc.retry_after)
                if attempt == 1 or attempt % 20 == 0:
                    logger.warning("sink %s write failed (%s); retry %d in %.1fs", name, exc, attempt, delay)
                await asyncio.sleep(delay)
                continue
            except Exception:
                # Not a known outage: a bug or a failure mode we have not met. Stopping the
                # worker would stop the receipts and the other sinks with it, so this sink
                # alone keeps retrying, loudly, at the longest backoff, and nothing is skipped.
                attempt += 1
                self.metrics.sink_up.labels(name).set(0)
                self.metrics.sink_errors.labels(name).inc()
                self.metrics.sink_retries.labels(name).inc()
                logger.exception("sink %s write failed unexpectedly; retry %d in %.1fs", name, attempt, backoff.ceiling)
                await asyncio.sleep(backoff.ceiling)
                continue
            if attempt:
                logger.info("sink %s is back after %d retries", name, attempt)
            self.metrics.sink_up.labels(name).set(1)
            self.metrics.sink_writes.labels(name).inc(len(records))
            self.written += len(records)
            return

    async def _commit(self) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit()
        except (CommitFailedError, KafkaError) as exc:
            # The group moved on (a rebalance): whoever owns the partitions now
            # re-reads from the last commit, and the idempotent writes absorb it.
            logger.warning("sink %s could not commit its offsets: %s", self.sink.name, exc)

    async def _measure_lag(self) -> None:
        assert self._consumer is not None
        lag = 0
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            with contextlib.suppress(KafkaError, AssertionError):
                lag += max(highwater - await self._consumer.position(TopicPartition(tp.topic, tp.partition)), 0)
        self.metrics.sink_lag.labels(self.sink.name).set(lag)
