"""Changelog writes held back until the events they follow are delivered.

The producer keeps order within a partition only. A request takes the first ready
batch of each partition, so a record appended to an older batch of one partition
can reach the broker before a record appended earlier to a newer batch of
another. Sent as they come, a customer's changelog record could therefore land
while the events of the same input were still waiting, and a crash then lost
those events for good: the restarted worker finds the input counted and does not
emit them again. (The fault suite saw it: one snapshot missing in a crash storm.)

So a changelog record is handed to the producer only after every event sent
before it, in the same input or earlier, has been acknowledged; records leave in
the order they were written, which keeps each key's history in order. The
producer's flush, which Faust awaits before it commits offsets, first waits for
the held records (see `streams.transport.Producer`), so no offset is committed
past an input whose state change is still held here.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[str, bytes, bytes | None, int], Awaitable[None]]


Write = tuple[str, bytes, bytes | None, int]  # topic, key, value (None: a tombstone), partition


class ChangelogGate:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._held: collections.deque[tuple[dict[asyncio.Future[Any], None], list[Write]]] = collections.deque()
        self._pending: dict[asyncio.Future[Any], None] = {}  # deliveries of events sent since the last hold()
        self._writes: list[Write] = []  # records written since the last hold()
        self._holds = 0  # how many batches of records were ever held ...
        self._released = 0  # ... and how many of them have been handed to the producer
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    def sent(self, delivery: asyncio.Future[Any]) -> None:
        """An event (not a changelog record) was handed to the producer: later records wait for it.

        Events share deliveries (a batch's, streams/sending.py): each is waited for once."""
        self._pending[delivery] = None
        if len(self._pending) >= 4096:  # sends by agents that never hold records (ingest)
            self._pending = {f: None for f in self._pending if not f.done()}

    def write(self, topic: str, key: bytes, value: bytes | None, partition: int) -> None:
        """A changelog record of the input in progress (None: a tombstone)."""
        self._writes.append((topic, key, value, partition))

    def hold(self) -> None:
        """The input is done: its records go once every event sent so far is delivered."""
        if not self._writes:
            return
        self._held.append((self._pending, self._writes))
        self._pending, self._writes = {}, []
        self._holds += 1
        self._wake.set()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._run())

    @property
    def held(self) -> int:
        return len(self._held)

    async def drained(self) -> None:
        """Returns once every record held before the call has been handed to the producer
        (records held meanwhile are not waited for, so a commit never waits on live traffic)."""
        if self._released >= self._holds:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._holds, done))
        await done

    async def _run(self) -> None:
        while True:
            if not self._held:
                self._wake.clear()
                await self._wake.wait()
                continue
            waits_for, writes = self._held[0]
            unfinished = [f for f in waits_for if not f.done()]
            if unfinished:
                await asyncio.wait(unfinished)
            # A failed delivery stops the worker (see agents.delivered); sending the
            # record anyway is harmless then: nothing after it is committed.
            for topic, key, value, partition in writes:
                await self._send(topic, key, value, partition)
            self._held.popleft()
            self._released += 1
            if self._waiters:
                ready = [w for w in self._waiters if w[0] <= self._released]
                self._waiters = [w for w in self._waiters if w[0] > self._released]
                for _, waiter in ready:
                    if not waiter.done():
                        waiter.set_result(None)

    def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
