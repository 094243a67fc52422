"""Feeds one sink from the output topics, in a consumer group of its own.

The sink's consumer group is the buffer: a batch is fetched (at most
`max_batch` records, the bounded buffer), written with retries and backoff
until it succeeds, and only then are the offsets committed. A sink that is
down therefore stops its own consumption and nothing else: the receipts, the
Kafka outputs and the other sinks go on, and the output topics hold what it has
not written yet. When it returns it catches up from its committed offsets; the
writes are idempotent, so a batch written twice (after a crash between write
and commit) is stored once.

A record the destination refuses (a value it cannot store) must not hold back the
records behind it: the batch is written in halves down to the records refused alone,
which are set aside on the dead-letter topic with the store's reason; the rest is
written in order. A store that is down is never mistaken for one that refuses: an
unexpected error counts as a refusal only while the store answers its health check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from models.dead_letters import dead_letter
from sinks.base import Sink, SinkRecord, SinkRefused, SinkUnavailable
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
        dead_letters: str | None = None,
    ) -> None:
        """`dead_letters`: the topic records the sink refuses are set aside on (None: they are
        only logged and counted)."""
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
        self._dead_letters = dead_letters
        self._producer: AIOKafkaProducer | None = None
        self._bootstrap = bootstrap
        self._stopping = asyncio.Event()
        self.written = 0
        self.set_aside = 0

    async def run(self) -> None:
        """Runs until `stop()`; never gives up on the sink."""
        name = self.sink.name
        await self._start_sink()
        consumer = self._consumer = AIOKafkaConsumer(*self.topics, **self._consumer_options)
        if self._dead_letters is not None:
            self._producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all")
            await self._producer.start()
        await consumer.start()
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=self.max_batch)
                records: list[SinkRecord] = []
                for tp, batch in batches.items():
                    for record in batch:
                        decoded = self._decoded(tp.topic, record)
                        if isinstance(decoded, SinkRecord):
                            records.append(decoded)
                        else:
                            where = (tp.topic, tp.partition, record.offset)
                            await self._put_aside(record.value, record.key, where, decoded)
                if records:
                    self.metrics.sink_buffer.labels(name).set(len(records))
                    await self._write(records)
                    self.metrics.sink_buffer.labels(name).set(0)
                if batches:
                    await self._commit()
                await self._measure_lag()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            if self._producer is not None:
                with contextlib.suppress(Exception):
                    await self._producer.stop()
            with contextlib.suppress(Exception):
                await self.sink.stop()

    def _decoded(self, topic: str, record: ConsumerRecord[bytes, bytes]) -> SinkRecord | str:
        """The record as the sink takes it, or why it cannot be taken."""
        try:
            value = orjson.loads(record.value) if record.value is not None else None
            key = record.key.decode() if record.key is not None else None
        except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
            return f"{self.sink.name} sink: not an output event: {exc}"
        if not isinstance(value, dict):
            return f"{self.sink.name} sink: not an output event: expected a JSON object"
        return SinkRecord(self.topics[topic], key, value, (topic, record.partition, record.offset))

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
        """Writes records in order: retried for as long as the sink is down, never skipped; a
        part the sink refuses is written in halves, down to the records it refuses alone,
        which are set aside."""
        try:
            await self._write_while_down(records)
        except Exception as exc:
            if len(records) > 1:
                half = len(records) // 2
                await self._write(records[:half])
                await self._write(records[half:])
                return
            (record,) = records
            value = orjson.dumps(record.value)
            key = record.key.encode() if record.key is not None else None
            await self._put_aside(value, key, record.source, f"{self.sink.name} sink refused it: {exc}")

    async def _write_while_down(self, records: list[SinkRecord]) -> None:
        """Writes records, waiting out an outage; raises when the sink refuses them."""
        name = self.sink.name
        backoff = Backoff()
        attempt = 0
        while True:
            try:
                await self.sink.write(records)
                await self.sink.flush()
            except SinkRefused:
                self.metrics.sink_errors.labels(name).inc()
                raise
            except Exception as exc:
                unavailable = isinstance(exc, SinkUnavailable)
                self.metrics.sink_errors.labels(name).inc()
                if not unavailable and await self._answers():
                    # Not an outage: the sink is up and this batch fails, so it is the batch.
                    logger.warning("sink %s failed to write %d records while up: %r", name, len(records), exc)
                    raise
                attempt += 1
                self.metrics.sink_up.labels(name).set(0)
                self.metrics.sink_retries.labels(name).inc()
                delay = backoff.delay(exc.retry_after if isinstance(exc, SinkUnavailable) else None)
                if attempt == 1 or attempt % 20 == 0:
                    logger.warning("sink %s write failed (%s); retry %d in %.1fs", name, exc, attempt, delay)
                await asyncio.sleep(delay)
                continue
            if attempt:
                logger.info("sink %s is back after %d retries", name, attempt)
            self.metrics.sink_up.labels(name).set(1)
            self.metrics.sink_writes.labels(name).inc(len(records))
            self.written += len(records)
            return

    async def _answers(self) -> bool:
        try:
            return await self.sink.healthy()
        except Exception:
            return False

    async def _put_aside(
        self, value: bytes | None, key: bytes | None, source: tuple[str, int, int] | None, error: str
    ) -> None:
        """Sets a record aside on the dead-letter topic, with why; the sink goes on without it."""
        topic, partition, offset = source if source is not None else ("", -1, -1)
        logger.error("sink %s set aside %s[%d]@%d: %s", self.sink.name, topic, partition, offset, error)
        self.metrics.sink_dead_letters.labels(self.sink.name).inc()
        self.set_aside += 1
        if self._producer is not None and self._dead_letters is not None:
            record = dead_letter(value, key, topic, partition, offset, error)
            await self._producer.send_and_wait(self._dead_letters, record, key=key)

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
