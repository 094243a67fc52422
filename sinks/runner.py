"""Feeds one sink from the output topics, in a consumer group of its own.

The sink's consumer group is the buffer: a batch is fetched (the runner holds at
most `max_batch` records, the bounded buffer), written with retries and backoff
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

What a sink has not written is visible while it happens (`SinkRunner.progress`, the
`loyalty_sink_consumer_lag` and `loyalty_sink_oldest_unwritten_seconds` metrics): a
monitor compares the topics' end offsets with the offsets the sink committed, every
`monitor_interval` seconds, also while the sink is down and nothing is fetched.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from models.dead_letters import dead_letter
from sinks.base import Sink, SinkRecord, SinkRefused, SinkUnavailable
from sinks.metrics import SinkMetrics

logger = logging.getLogger(__name__)

#: A sink may be down for hours; its consumer must not be thrown out of the group meanwhile.
MAX_POLL_INTERVAL_MS = 24 * 3600 * 1000

#: Records decoded between two turns of the event loop: the batch being written goes on
#: meanwhile (a statement answered, the next one sent) instead of waiting for the whole batch.
_DECODE_SLICE = 200


class Backoff:
    """Exponential backoff: 0.1 s, 0.2 s, ... up to `ceiling`; one per write, so it starts over
    with the next batch."""

    def __init__(self, first: float = 0.1, ceiling: float = 5.0) -> None:
        self.ceiling = ceiling
        self.next = first

    def delay(self, suggested: float | None = None) -> float:
        delay = suggested if suggested is not None else self.next
        self.next = min(self.next * 2, self.ceiling)
        return delay


class _Abandoned(Exception):
    """The runner is stopping while its sink is down: the batch in hand is left uncommitted."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a sink stands, for `GET /health`."""

    up: bool
    #: Output records not yet written (end offsets minus the committed offsets), by topic; None
    #: until the runner has its partitions and their offsets (in its first second or so).
    lag: dict[str, int] | None
    #: Age of the oldest output event not yet written; 0.0 when the sink has everything.
    oldest_unwritten_seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "lag": sum(self.lag.values()) if self.lag is not None else None,
            "lag_by_topic": self.lag,
            "oldest_unwritten_seconds": round(self.oldest_unwritten_seconds, 3),
        }


class _Unwritten:
    """What a sink has not written yet, per partition of its assignment.

    The age of the oldest unwritten event is exact for a partition whose first unwritten
    record is in the batch in hand (its Kafka timestamp). Otherwise that record has not been
    fetched yet, and it was produced after both the last record written from its partition
    and the last moment the partition was seen with nothing unwritten: the age is measured
    from the later of the two, an upper bound that is tight while records flow and after an
    idle spell. A partition with neither (a backlog found at start) counts once its first
    batch is fetched.
    """

    def __init__(self) -> None:
        self.ends: dict[TopicPartition, int] = {}  # end offsets (the next offset to be produced)
        self.committed: dict[TopicPartition, int] = {}  # the next offset the sink has to write
        #: Per partition, the timestamp of the first record of each batch in hand, oldest first.
        self.in_hand: dict[TopicPartition, collections.deque[float]] = {}
        self.written_at: dict[TopicPartition, float] = {}  # timestamp of the last record written
        self.clear_at: dict[TopicPartition, float] = {}  # when the partition was last seen with nothing to write
        #: Whether the offsets of an assignment have been read (until then nothing is known to be written).
        self.known = False

    def behind(self, tp: TopicPartition) -> int:
        end, committed = self.ends.get(tp), self.committed.get(tp)
        if end is None or committed is None:
            return 0
        return max(end - committed, 0)

    def seen_end(self, tp: TopicPartition, end: int, now: float) -> None:
        self.ends[tp] = max(end, self.ends.get(tp, 0))
        if self.behind(tp) == 0 and tp in self.committed:
            self.clear_at[tp] = now

    def fetched(self, tp: TopicPartition, first_timestamp: float) -> None:
        self.in_hand.setdefault(tp, collections.deque()).append(first_timestamp)

    def done(self, tp: TopicPartition) -> None:
        """The oldest batch in hand of `tp` is written (or given up: it will be read again)."""
        in_hand = self.in_hand.get(tp)
        if in_hand:
            in_hand.popleft()

    def wrote(self, tp: TopicPartition, next_offset: int, timestamp: float, now: float) -> None:
        self.committed[tp] = next_offset
        self.written_at[tp] = timestamp
        self.done(tp)
        if self.behind(tp) == 0:
            self.clear_at[tp] = now

    def forget(self, kept: set[TopicPartition]) -> None:
        """Drops what is known of partitions no longer assigned (another sink process has them)."""
        for known in (self.ends, self.committed, self.in_hand, self.written_at, self.clear_at):
            for tp in [tp for tp in known if tp not in kept]:
                del known[tp]

    def oldest_age(self, now: float) -> float:
        oldest = 0.0
        for tp in self.committed:
            if self.behind(tp) == 0:
                continue
            in_hand = self.in_hand.get(tp)
            since = in_hand[0] if in_hand else None
            if since is None:
                bounds = [t for t in (self.written_at.get(tp), self.clear_at.get(tp)) if t is not None]
                if not bounds:
                    continue
                since = max(bounds)
            oldest = max(oldest, now - since)
        return oldest


class SinkRunner:
    def __init__(
        self,
        sink: Sink,
        *,
        bootstrap: str,
        group_id: str,
        topics: Mapping[str, str],  # topic name -> record kind
        metrics: SinkMetrics,
        max_batch: int = 1000,
        fetch_max_wait_ms: int = 10,
        session_timeout_ms: int = 10_000,
        dead_letters: str | None = None,
        monitor_interval: float = 1.0,
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
        self._monitor_interval = monitor_interval
        self._unwritten = _Unwritten()
        self._up = False
        self._holding = 0  # records fetched and not yet written
        self.written = 0
        self.set_aside = 0
        name = sink.name
        metrics.oldest_unwritten.labels(name).set_function(lambda: self._unwritten.oldest_age(time.time()))
        for topic in self.topics:
            metrics.consumer_lag.labels(name, topic).set_function(functools.partial(self._lag_of, topic))

    def progress(self) -> Progress:
        return Progress(
            up=self._up,
            lag={topic: self._lag_of(topic) for topic in self.topics} if self._unwritten.known else None,
            oldest_unwritten_seconds=self._unwritten.oldest_age(time.time()),
        )

    def _lag_of(self, topic: str) -> int:
        return sum(self._unwritten.behind(tp) for tp in self._unwritten.committed if tp.topic == topic)

    async def run(self) -> None:
        """Runs until `stop()`; never gives up on the sink.

        The next batch is fetched and decoded while the one before it is written: the two
        overlap (the store works while this process decodes), and each is at most half of
        `max_batch`, so that together they hold no more. Batches are written, and their
        offsets committed, one after the other, in the order they were fetched.
        """
        await self._start_sink()
        consumer = self._consumer = AIOKafkaConsumer(*self.topics, **self._consumer_options)
        if self._dead_letters is not None:
            self._producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all")
            await self._producer.start()
        await consumer.start()
        monitor = asyncio.create_task(self._monitor(), name=f"sink-{self.sink.name}-monitor")
        writing: asyncio.Task[bool] | None = None
        fetch = max(self.max_batch // 2, 1)
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=fetch)
                records = await self._records(batches)
                if writing is not None and not await writing:
                    break  # stopping while the sink is down: the next runner reads the batch again
                writing = None
                if batches:
                    writing = asyncio.create_task(self._store(records, batches))
                await self._measure_lag()
            if writing is not None:
                await writing
        finally:
            if writing is not None and not writing.done():
                writing.cancel()
                with contextlib.suppress(BaseException):
                    await writing
            monitor.cancel()
            with contextlib.suppress(BaseException):
                await monitor
            with contextlib.suppress(Exception):
                await consumer.stop()
            if self._producer is not None:
                with contextlib.suppress(Exception):
                    await self._producer.stop()
            with contextlib.suppress(Exception):
                await self.sink.stop()

    async def _records(self, batches: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> list[SinkRecord]:
        """The fetched records as the sink takes them; what it cannot take is set aside."""
        records: list[SinkRecord] = []
        for tp, batch in batches.items():
            self._unwritten.fetched(tp, batch[0].timestamp / 1000)
            for n, record in enumerate(batch, 1):
                decoded = self._decoded(tp.topic, record)
                if isinstance(decoded, SinkRecord):
                    records.append(decoded)
                else:
                    where = (tp.topic, tp.partition, record.offset)
                    await self._put_aside(record.value, record.key, where, decoded)
                if n % _DECODE_SLICE == 0:
                    await asyncio.sleep(0)  # lets the batch being written send its next statement
        self._holding += len(records)
        self.metrics.buffer.labels(self.sink.name).set(self._holding)
        return records

    async def _store(
        self, records: list[SinkRecord], batches: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> bool:
        """Writes one fetched batch and commits its offsets; False when it was abandoned (stopping)."""
        try:
            if records:
                await self._write(records)
        except _Abandoned:
            return False
        finally:
            self._holding -= len(records)
            self.metrics.buffer.labels(self.sink.name).set(self._holding)
        await self._commit(batches)
        return True

    def _decoded(self, topic: str, record: ConsumerRecord[bytes, bytes]) -> SinkRecord | str:
        """The record as the sink takes it, or why it cannot be taken."""
        try:
            value = orjson.loads(record.value) if record.value is not None else None
            key = record.key.decode() if record.key is not None else None
        except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
            return f"{self.sink.name} sink: not an output event: {exc}"
        if not isinstance(value, dict):
            return f"{self.sink.name} sink: not an output event: expected a JSON object"
        return SinkRecord(self.topics[topic], key, value, (topic, record.partition, record.offset), record.value)

    async def stop(self) -> None:
        self._stopping.set()

    async def _start_sink(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self.sink.start()
                self._set_up(True)
                return
            except SinkUnavailable as exc:
                self._set_up(False)
                self.metrics.errors.labels(self.sink.name).inc()
                delay = backoff.delay(exc.retry_after)
                logger.warning("sink %s cannot start (%s); retrying in %.1fs", self.sink.name, exc, delay)
                await asyncio.sleep(delay)

    def _set_up(self, up: bool) -> None:
        self._up = up
        self.metrics.up.labels(self.sink.name).set(1 if up else 0)

    async def _write(self, records: list[SinkRecord]) -> None:
        """Writes records in order: retried for as long as the sink is down, never skipped; a
        part the sink refuses is written in halves, down to the records it refuses alone,
        which are set aside."""
        try:
            await self._write_while_down(records)
        except _Abandoned:
            raise
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
                self.metrics.errors.labels(name).inc()
                raise
            except Exception as exc:
                unavailable = isinstance(exc, SinkUnavailable)
                self.metrics.errors.labels(name).inc()
                if self._stopping.is_set():
                    raise _Abandoned() from exc
                if not unavailable and await self._answers():
                    # Not an outage: the sink is up and this batch fails, so it is the batch.
                    logger.warning("sink %s failed to write %d records while up: %r", name, len(records), exc)
                    raise
                attempt += 1
                self._set_up(False)
                self.metrics.retries.labels(name).inc()
                delay = backoff.delay(exc.retry_after if isinstance(exc, SinkUnavailable) else None)
                if attempt == 1 or attempt % 20 == 0:
                    logger.warning("sink %s write failed (%s); retry %d in %.1fs", name, exc, attempt, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            if attempt:
                logger.info("sink %s is back after %d retries", name, attempt)
            self._set_up(True)
            self.metrics.writes.labels(name).inc(len(records))
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
        self.metrics.dead_letters.labels(self.sink.name).inc()
        self.set_aside += 1
        if self._producer is not None and self._dead_letters is not None:
            record = dead_letter(value, key, topic, partition, offset, error)
            await self._producer.send_and_wait(self._dead_letters, record, key=key)

    async def _commit(self, batches: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Commits the offsets after each partition's last record in `batches`, all written or set aside."""
        assert self._consumer is not None
        offsets = {tp: batch[-1].offset + 1 for tp, batch in batches.items()}
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The group moved on (a rebalance): whoever owns the partitions now
            # re-reads from the last commit, and the idempotent writes absorb it.
            logger.warning("sink %s could not commit its offsets: %s", self.sink.name, exc)
            for tp in batches:
                self._unwritten.done(tp)
            return
        now = time.time()
        for tp, batch in batches.items():
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                self._unwritten.seen_end(tp, highwater, now)
            self._unwritten.wrote(tp, offsets[tp], batch[-1].timestamp / 1000, now)

    async def _measure_lag(self) -> None:
        assert self._consumer is not None
        lag = 0
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            with contextlib.suppress(KafkaError, AssertionError):
                lag += max(highwater - await self._consumer.position(TopicPartition(tp.topic, tp.partition)), 0)
        self.metrics.lag.labels(self.sink.name).set(lag)

    async def _monitor(self) -> None:
        """Keeps the end and committed offsets of the assignment current, also while the sink is down."""
        assert self._consumer is not None
        consumer = self._consumer
        unwritten = self._unwritten
        while True:
            try:
                assigned = set(consumer.assignment())
                unwritten.forget(assigned)
                for tp in assigned - unwritten.committed.keys():
                    committed = await consumer.committed(tp)
                    if committed is None:
                        committed = (await consumer.beginning_offsets([tp]))[tp]
                    unwritten.committed.setdefault(tp, committed)
                if assigned:
                    # The fetches' high watermarks as well: the embedded Tansu broker answers a
                    # ListOffsets with the start of the partition's last record batch, not its end.
                    ends = await consumer.end_offsets(list(assigned))
                    now = time.time()
                    for tp, end in ends.items():
                        unwritten.seen_end(tp, max(end, consumer.highwater(tp) or 0), now)
                    unwritten.known = True
            except (KafkaError, AssertionError, OSError) as exc:
                logger.debug("sink %s: offsets not available now (%s)", self.sink.name, exc)
            await asyncio.sleep(self._monitor_interval)
