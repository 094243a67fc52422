"""The outbox: records reach the producer in batches, per partition in order, each with its batch's delivery."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.structs import RecordMetadata

from streams.envelope import partition_for
from streams.sending import Outbox


class FakeProducer:
    """What the outbox needs of AIOKafkaProducer, with the real batch builder; deliveries settle when told."""

    def __init__(self, batch_size: int = 16384, partitions: int = 4) -> None:
        self.batch_size, self.partitions = batch_size, partitions
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes | None]]]] = []
        self.deliveries: list[asyncio.Future[Any]] = []

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0)

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        records = DefaultRecordBatch(bytearray(batch._build()))
        self.sent.append((topic, partition, [(r.key, r.value) for r in records]))
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.deliveries.append(delivery)
        return delivery


def never(exc: BaseException) -> None:
    raise AssertionError(f"unexpected failure: {exc!r}")


async def test_records_of_a_partition_go_as_one_batch_in_order_after_the_linger() -> None:
    producer = FakeProducer()
    outbox = Outbox(lambda: producer, never, linger=0.01)  # type: ignore[arg-type, return-value]
    await outbox.prepare(["status"])
    deliveries = [outbox.add("status", b"C-1", f"v{n}".encode()) for n in range(5)]
    assert producer.sent == []
    await asyncio.sleep(0.05)
    partition = partition_for("C-1", 4)  # Kafka's default partitioner, as the project's own
    assert producer.sent == [("status", partition, [(b"C-1", f"v{n}".encode()) for n in range(5)])]
    assert len(set(map(id, deliveries))) == 1  # one batch, one delivery
    assert not deliveries[0].done()
    producer.deliveries[0].set_result(RecordMetadata("status", partition, None, 40, -1, 0, 0))
    await asyncio.sleep(0)
    assert deliveries[0].done()
    assert outbox.delivered == {("status", partition): 44}  # the batch's base offset and four more


async def test_a_full_batch_goes_at_once_and_keeps_the_partition_s_order() -> None:
    producer = FakeProducer(batch_size=512)
    outbox = Outbox(lambda: producer, never, linger=60)  # type: ignore[arg-type, return-value]
    for n in range(20):
        outbox.add("messages", b"POS1", b"x" * 60 + str(n).encode(), partition=2)
    await outbox.ship()
    assert len(producer.sent) > 1
    values = [value for _, _, records in producer.sent for _, value in records]
    assert values == [b"x" * 60 + str(n).encode() for n in range(20)]
    assert {(topic, partition) for topic, partition, _ in producer.sent} == {("messages", 2)}


async def test_records_without_key_spread_over_the_partitions() -> None:
    producer = FakeProducer()
    outbox = Outbox(lambda: producer, never)  # type: ignore[arg-type, return-value]
    await outbox.prepare(["dead-letters"])
    for n in range(8):
        outbox.add("dead-letters", None, str(n).encode())
    await outbox.ship()
    assert sorted(partition for _, partition, _ in producer.sent) == [0, 1, 2, 3]


async def test_a_failed_delivery_is_reported_and_fails_the_batch_s_future() -> None:
    producer = FakeProducer()
    failures: list[BaseException] = []
    outbox = Outbox(lambda: producer, failures.append)  # type: ignore[arg-type, return-value]
    await outbox.prepare(["status"])
    delivery = outbox.add("status", b"C-1", b"v")
    await outbox.ship()
    producer.deliveries[0].set_exception(ConnectionError("broker gone"))
    await asyncio.sleep(0)
    assert [type(f) for f in failures] == [ConnectionError]
    with pytest.raises(ConnectionError):
        await delivery


async def test_a_record_too_large_for_any_batch_is_an_error_not_a_silent_loss() -> None:
    producer = FakeProducer(batch_size=100)
    outbox = Outbox(lambda: producer, never, max_record_bytes=5000)  # type: ignore[arg-type, return-value]
    await outbox.prepare(["status"])
    outbox.add("status", b"C-1", b"x" * 4000)  # larger than a batch, within the limit: a batch of its own
    with pytest.raises(ValueError, match="larger than the 5000-byte limit"):
        outbox.add("status", b"C-1", b"x" * 10_000)
    await outbox.ship()
    assert [len(records) for _, _, records in producer.sent] == [1]


async def test_add_never_waits_and_a_full_batch_leaves_before_later_ones() -> None:
    producer = FakeProducer(batch_size=512)
    outbox = Outbox(lambda: producer, never, linger=60)  # type: ignore[arg-type, return-value]
    await outbox.prepare(["messages"])
    deliveries = [outbox.add("messages", b"POS1", f"{n:03d}".encode() * 30) for n in range(12)]
    assert producer.sent == []  # nothing awaited: the full ones wait for the loop
    await asyncio.sleep(0)
    await outbox.ship()
    values = [value for _, _, records in producer.sent for _, value in records]
    assert values == [f"{n:03d}".encode() * 30 for n in range(12)]
    assert len(set(map(id, deliveries))) == len(producer.sent) > 1


async def test_an_unprepared_topic_is_refused() -> None:
    outbox = Outbox(lambda: FakeProducer(), never)  # type: ignore[arg-type, return-value]
    assert not outbox.knows("status")
    with pytest.raises(KeyError):
        outbox.add("status", b"C-1", b"v")
    outbox.add("status", b"C-1", b"v", partition=1)  # an explicit partition needs no count
