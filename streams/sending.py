"""Records to the producer a batch at a time, not one by one.

`AIOKafkaProducer.send` runs a good deal of Python per record (partitioning, size
checks, a future per record, the accumulator's bookkeeping), and a receipt makes
five or six records. Appending to the producer's own batch builder and handing the
builder over with `send_batch` costs a fraction of that. This keeps one open
builder per topic partition; a builder goes when it is full, `linger` seconds after
its first record, or on `ship()`, which the producer's flush calls before Faust
commits offsets.

`add` never waits (once a topic's partitions are known, see `prepare`): the live
path hands over a batch's records, and what depends on them, without anything else
running in between. Each record's delivery is its builder's: `add` returns
the future of the builder it went into, and `fence` every delivery still pending, so
a commit (streams/intake.py) can wait for the events made before its states. Records of a partition
keep their order: its builders leave in the order they were opened.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.envelope import default_partition

Batch = tuple[str, int, Any, "asyncio.Future[None]"]  # topic, partition, builder, its delivery


class Outbox:
    def __init__(
        self,
        producer: Callable[[], AIOKafkaProducer],
        on_error: Callable[[BaseException], None],
        *,
        linger: float = 0.002,
        max_record_bytes: int = 1_000_000,
    ) -> None:
        self._producer = producer  # the producer Faust started (it exists only once the app runs)
        self._on_error = on_error  # a batch that could not be delivered: nothing after it may be committed
        self._linger = linger
        self._max_record_bytes = max_record_bytes  # the producer's request limit (a batch takes one of any size)
        self._partitions: dict[str, int] = {}
        self._round_robin: dict[str, itertools.cycle[int]] = {}
        self._open: dict[tuple[str, int], Batch] = {}
        self._full: collections.deque[Batch] = collections.deque()  # to go before any open one
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._shipping: asyncio.Future[None] | None = None
        self._unsettled: set[asyncio.Future[None]] = set()
        #: Per topic partition, the offset of the last record delivered (a disk store records
        #: how far its changelog partitions are applied: streams/store.py).
        self.delivered: dict[tuple[str, int], int] = {}
        self.batches = 0
        self.records = 0

    def knows(self, topic: str) -> bool:
        return topic in self._partitions

    async def prepare(self, topics: Iterable[str]) -> None:
        """Learns the topics' partition counts, so that `add` never has to wait for them."""
        for topic in topics:
            if topic not in self._partitions:
                count = len(await self._producer().partitions_for(topic))
                self._partitions[topic] = count
                self._round_robin[topic] = itertools.cycle(range(count))

    def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> Any:
        """Queues a record for a prepared topic (or an explicit partition); returns its batch's delivery."""
        size = len(key or b"") + len(value or b"")
        if size > self._max_record_bytes:
            raise ValueError(
                f"a record of {size} bytes is larger than the {self._max_record_bytes}-byte limit of {topic}"
            )
        if partition is None:
            partition = self._partition_of(topic, key)
        tp = (topic, partition)
        entry = self._open.get(tp)
        if entry is not None:
            if entry[2].append(timestamp=None, key=key, value=value, headers=[]) is not None:
                self.records += 1
                return entry[3]
            del self._open[tp]  # full: it goes before anything opened after it
            self._full.append(entry)
            self._ship_in_background()
        builder = self._producer().create_batch()
        builder.append(timestamp=None, key=key, value=value, headers=[])  # an empty batch takes any record
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unsettled.add(delivery)
        delivery.add_done_callback(self._unsettled.discard)
        self._open[tp] = (topic, partition, builder, delivery)
        self.records += 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger, self._on_timer)
        return delivery

    def partitions(self, topic: str) -> int:
        """A prepared topic's partition count."""
        return self._partitions[topic]

    def fence(self) -> list[asyncio.Future[None]]:
        """The deliveries of every record added so far that is not delivered yet."""
        return list(self._unsettled)

    async def flush(self) -> None:
        """Ships everything added so far and waits until it is delivered."""
        fence = self.fence()
        await self.ship()
        if fence:
            await asyncio.gather(*fence)

    async def ship(self) -> None:
        """Hands every batch to the producer: the full ones first, then the open ones."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        async with self._lock:
            self._full.extend(self._open.values())
            self._open.clear()
            while self._full:
                topic, partition, builder, delivery = self._full.popleft()
                try:
                    sent = await self._producer().send_batch(builder, topic, partition=partition)
                except BaseException as exc:
                    delivery.set_exception(exc)
                    raise
                self.batches += 1
                last = (topic, partition, builder.record_count() - 1)
                sent.add_done_callback(lambda done, delivery=delivery, last=last: self._settle(delivery, done, last))

    def _on_timer(self) -> None:
        self._timer = None
        self._ship_in_background()

    def _ship_in_background(self) -> None:
        if self._shipping is None or self._shipping.done():
            self._shipping = asyncio.ensure_future(self.ship())
            self._shipping.add_done_callback(self._shipped)

    def _shipped(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._on_error(task.exception())  # type: ignore[arg-type]
        elif (self._open or self._full) and self._timer is None:
            # Records added while it ran: they go after the linger like any others.
            self._timer = asyncio.get_running_loop().call_later(self._linger, self._on_timer)

    def _settle(self, delivery: asyncio.Future[None], sent: asyncio.Future[Any], last: tuple[str, int, int]) -> None:
        if delivery.done():
            return
        if sent.cancelled():
            delivery.cancel()
        elif sent.exception() is not None:
            exc = sent.exception()
            assert exc is not None
            delivery.set_exception(exc)
            self._on_error(exc)
        else:
            topic, partition, after_base = last
            offset = sent.result().offset + after_base
            if offset > self.delivered.get((topic, partition), -1):
                self.delivered[topic, partition] = offset
            delivery.set_result(None)

    def _partition_of(self, topic: str, key: bytes | None) -> int:
        count = self._partitions[topic]  # KeyError: the topic was not prepared
        if key is None:
            return next(self._round_robin[topic])
        # Kafka's default partitioner (the Java client's and aiokafka's): consumers that look a
        # key up by partition find it where any other producer would have put it.
        return default_partition(key, count)
