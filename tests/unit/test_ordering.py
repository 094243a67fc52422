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


async def test_a_record_waits_for_the_events_sent_before_it_and_records_keep_their_order() -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    gate = ChangelogGate(recorder)
    first_event: asyncio.Future[Any] = loop.create_future()
    gate.sent(first_event)
    gate.hold([("changelog", b"C-1@1", b"v1", 0)])
    second_event: asyncio.Future[Any] = loop.create_future()
    gate.sent(second_event)
    gate.hold([("changelog", b"C-1@2", b"v2", 0), ("changelog", b"C-2@1", b"v1", 1)])
    await settle()
    assert recorder.written == []  # nothing delivered yet
    second_event.set_result(None)  # the later event is delivered first (another partition)
    await settle()
    assert recorder.written == []  # C-1@2 must not overtake C-1@1
    first_event.set_result(None)
    await settle()
    assert recorder.written == [b"C-1@1", b"C-1@2", b"C-2@1"]
    gate.stop()


async def test_drained_waits_for_what_was_held_before_it_not_for_later_traffic() -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    gate = ChangelogGate(recorder)
    early: asyncio.Future[Any] = loop.create_future()
    gate.sent(early)
    gate.hold([("changelog", b"early", b"v", 0)])
    drained = asyncio.ensure_future(gate.drained())
    await asyncio.sleep(0)  # the commit asks now
    late: asyncio.Future[Any] = loop.create_future()
    gate.sent(late)
    gate.hold([("changelog", b"late", b"v", 0)])
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


async def test_nothing_held_means_nothing_to_wait_for() -> None:
    gate = ChangelogGate(Recorder())
    gate.hold([])
    await asyncio.wait_for(gate.drained(), timeout=1.0)
