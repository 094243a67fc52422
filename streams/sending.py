"""Records to the producer a batch at a time, not one by one.

`AIOKafkaProducer.send` costs about 9 µs of Python per record here (partitioning,
size checks, a future per record, the accumulator's bookkeeping); a receipt makes
five or six records. Appending to the producer's own batch builder and handing the
builder over with `send_batch` costs about 1 µs a record. This keeps one open
builder per topic partition; a builder goes when it is full, `linger` seconds after
its first record, or on `ship()`, which the producer's flush calls before Faust
commits offsets.

Each record's delivery is its builder's: `add` returns the future of the builder
it went into, so the changelog gate (streams/ordering.py) can wait for the events
before a record exactly as before. Records of one partition keep their order:
builders of a partition leave in the order they were opened.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2


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
        self._open: dict[tuple[str, int], tuple[Any, asyncio.Future[None]]] = {}  # builder, its delivery
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0
        self.records = 0

    async def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> Any:
        """Queues a record; returns the future of its delivery (its batch's)."""
        size = len(key or b"") + len(value or b"")
        if size > self._max_record_bytes:
            raise ValueError(
                f"a record of {size} bytes is larger than the {self._max_record_bytes}-byte limit of {topic}"
            )
        if partition is None:
            partition = await self._partition_of(topic, key)
        tp = (topic, partition)
        while True:
            entry = self._open.get(tp)
            if entry is None:
                break
            if entry[0].append(timestamp=None, key=key, value=value, headers=[]) is not None:
                self.records += 1
                return entry[1]
            await self._ship_one(tp, entry)  # full: it goes now, and the record takes the next one
        builder = self._producer().create_batch()
        builder.append(timestamp=None, key=key, value=value, headers=[])  # an empty batch takes any record
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._open[tp] = (builder, delivery)
        self.records += 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger, self._ship_soon)
        return delivery

    async def ship(self) -> None:
        """Hands every open batch to the producer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for tp in list(self._open):
            await self._ship_one(tp)

    async def _ship_one(self, tp: tuple[str, int], entry: tuple[Any, asyncio.Future[None]] | None = None) -> None:
        """Sends the partition's open batch (only `entry`, if given and still open)."""
        async with self._lock:
            current = self._open.get(tp)
            if current is None or (entry is not None and current is not entry):
                return
            del self._open[tp]
            builder, delivery = current
            try:
                sent = await self._producer().send_batch(builder, tp[0], partition=tp[1])
            except BaseException as exc:
                delivery.set_exception(exc)
                raise
            self.batches += 1
            sent.add_done_callback(lambda done: self._settle(delivery, done))

    def _settle(self, delivery: asyncio.Future[None], sent: asyncio.Future[Any]) -> None:
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
            delivery.set_result(None)

    def _ship_soon(self) -> None:
        self._timer = None
        asyncio.ensure_future(self.ship()).add_done_callback(self._shipped)

    def _shipped(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._on_error(task.exception())  # type: ignore[arg-type]

    async def _partition_of(self, topic: str, key: bytes | None) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = self._partitions[topic] = len(await self._producer().partitions_for(topic))
            self._round_robin[topic] = itertools.cycle(range(count))
        if key is None:
            return next(self._round_robin[topic])
        # Kafka's default partitioner (the Java client's and aiokafka's): consumers that look a
        # key up by partition find it where any other producer would have put it.
        return int(murmur2(key) & 0x7FFFFFFF) % count
