"""Inputs gathered per partition of loyalty-inputs: one record per batch, order kept."""

from __future__ import annotations

import asyncio

import pytest

from streams.envelope import Envelope, Source, decode_inputs, encode_batch
from streams.outbox import InputBatches


def envelope(n: int, raw: str = "{}") -> Envelope:
    return Envelope("receipt", raw, Source("receipts", n % 3, n, 1796000000.5))


class Sent:
    def __init__(self) -> None:
        self.records: list[tuple[int, list[Envelope]]] = []

    async def __call__(self, partition: int, value: bytes) -> None:
        self.records.append((partition, decode_inputs(value)))


def never(exc: BaseException) -> None:
    raise AssertionError(f"unexpected failure: {exc!r}")


def test_a_batch_decodes_to_its_inputs_and_a_single_envelope_still_reads() -> None:
    inputs = [envelope(n, f'{{"receipt_id": "R-{n}", "text": "ä \\" ünïcode"}}') for n in range(3)]
    assert decode_inputs(encode_batch(inputs)) == inputs
    assert decode_inputs(inputs[0].to_bytes()) == [inputs[0]]  # written before batches existed


async def test_inputs_leave_per_partition_in_order_after_the_linger() -> None:
    sent = Sent()
    batches = InputBatches(sent, never, linger=0.01)
    for n in range(10):
        await batches.add(n % 2, envelope(n))
    assert sent.records == []  # nothing yet: they wait for the linger
    await asyncio.sleep(0.05)
    assert sorted(sent.records, key=lambda r: r[0]) == [
        (0, [envelope(n) for n in range(0, 10, 2)]),
        (1, [envelope(n) for n in range(1, 10, 2)]),
    ]
    assert (batches.records, batches.inputs) == (2, 10)


async def test_a_full_batch_leaves_at_once_and_ship_sends_the_rest() -> None:
    sent = Sent()
    batches = InputBatches(sent, never, max_inputs=4, linger=60)
    for n in range(6):
        await batches.add(0, envelope(n))
    assert sent.records == [(0, [envelope(n) for n in range(4)])]
    await batches.ship()  # what the producer's flush does before an offset commit
    assert sent.records[1:] == [(0, [envelope(4), envelope(5)])]


async def test_a_batch_is_bounded_in_bytes_too() -> None:
    sent = Sent()
    batches = InputBatches(sent, never, max_bytes=1000, linger=60)
    await batches.add(0, envelope(0, "x" * 600))
    assert sent.records == []
    await batches.add(0, envelope(1, "x" * 600))
    assert [len(inputs) for _, inputs in sent.records] == [2]


async def test_a_batch_that_cannot_be_sent_stops_the_worker() -> None:
    failures: list[BaseException] = []

    async def broken(partition: int, value: bytes) -> None:
        raise ConnectionError("broker gone")

    batches = InputBatches(broken, failures.append, linger=0.001)
    await batches.add(0, envelope(0))
    await asyncio.sleep(0.05)
    assert [type(f) for f in failures] == [ConnectionError]
    # A full batch is sent by the input that filled it: the failure is that input's.
    with pytest.raises(ConnectionError):
        await InputBatches(broken, never, max_inputs=1).add(0, envelope(1))
