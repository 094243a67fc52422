"""The changelog gate: a state change reaches the changelog only after the events sent before it."""

from __future__ import annotations

import asyncio
from typing import Any

from streams.ordering import ChangelogGate


class Recorder:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def __call__(self, topic: str, key: bytes, value: bytes | None, partition: int) -> None:
        self.written.append(key)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def an_input(gate: ChangelogGate, *keys: bytes) -> asyncio.Future[Any]:
    """One input: an event sent (its delivery still pending), then its changelog records."""
    delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    gate.sent(delivery)
    for key in keys:
        gate.write("changelog", key, b"v", 0)
    gate.hold()
    return delivery


async def test_a_record_waits_for_the_events_sent_before_it_and_records_keep_their_order() -> None:
    recorder = Recorder()
    gate = ChangelogGate(recorder)
    first = an_input(gate, b"C-1@1")
    second = an_input(gate, b"C-1@2", b"C-2@1")
    await settle()
    assert recorder.written == []  # nothing delivered yet
    second.set_result(None)  # the later event is delivered first (another partition)
    await settle()
    assert recorder.written == []  # C-1@2 must not overtake C-1@1
    first.set_result(None)
    await settle()
    assert recorder.written == [b"C-1@1", b"C-1@2", b"C-2@1"]
    gate.stop()


async def test_drained_waits_for_what_was_held_before_it_not_for_later_traffic() -> None:
    recorder = Recorder()
    gate = ChangelogGate(recorder)
    early = an_input(gate, b"early")
    drained = asyncio.ensure_future(gate.drained())
    await asyncio.sleep(0)  # the commit asks now
    late = an_input(gate, b"late")
    await settle()
    assert not drained.done()  # a commit must wait for the early record ...
    early.set_result(None)
    await asyncio.wait_for(drained, timeout=1.0)  # ... but not for the one held after it asked
    assert recorder.written == [b"early"]
    assert gate.held == 1
    late.set_result(None)
    await settle()
    assert recorder.written == [b"early", b"late"]
    await asyncio.wait_for(gate.drained(), timeout=1.0)
    gate.stop()


async def test_an_input_without_records_holds_nothing() -> None:
    gate = ChangelogGate(Recorder())
    an_input(gate)  # an event, no state change (a duplicate, a dead letter)
    assert gate.held == 0
    await asyncio.wait_for(gate.drained(), timeout=1.0)
