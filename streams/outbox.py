"""Inputs for loyalty-inputs, gathered per partition and sent as one record each.

Every input crosses two Faust agents: an ingest agent validates it and hands it on
through loyalty-inputs, partitioned by customer, to the loyalty agent. Faust's cost
per event (about 60 µs here, whatever the agent does) was paid twice per receipt,
and the broker stored and served one record per receipt twice. Gathered, the second
crossing costs one event per batch: the loyalty agent takes the batch's inputs one
after another, exactly as it took single records.

Order is kept: everything sent to loyalty-inputs goes through here (ingest, the
merges and forwarded receipts, the clock's ticks), batches of a partition leave in
order, and one batch is one record. A batch leaves when it is full, `linger`
seconds after its first input, or when `ship` is called: the producer's flush, which
Faust awaits before every offset commit, calls it first, so an input acknowledged
by its ingest agent is always in the producer before its offset is committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from streams.envelope import Envelope, encode_batch

Send = Callable[[int, bytes], Awaitable[None]]  # partition, record value


class InputBatches:
    def __init__(
        self,
        send: Send,
        on_error: Callable[[BaseException], None],
        *,
        max_inputs: int = 500,
        max_bytes: int = 256 * 1024,
        linger: float = 0.002,
    ) -> None:
        self._send = send
        self._on_error = on_error  # a batch that could not be sent: nothing after it may be committed
        self._max_inputs, self._max_bytes, self._linger = max_inputs, max_bytes, linger
        self._pending: dict[int, list[Envelope]] = {}
        self._sizes: dict[int, int] = {}
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self.records = 0  # batches sent
        self.inputs = 0  # inputs they carried

    async def add(self, partition: int, envelope: Envelope) -> None:
        """Queues an input; returns at once unless its partition's batch is full and goes now."""
        batch = self._pending.setdefault(partition, [])
        batch.append(envelope)
        size = self._sizes.get(partition, 0) + len(envelope.raw) + 64
        self._sizes[partition] = size
        if len(batch) >= self._max_inputs or size >= self._max_bytes:
            await self.ship()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger, self._ship_soon)

    def _ship_soon(self) -> None:
        self._timer = None
        asyncio.ensure_future(self.ship()).add_done_callback(self._shipped)

    def _shipped(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._on_error(task.exception())  # type: ignore[arg-type]

    async def ship(self) -> None:
        """Sends every batch gathered so far, each partition's in order."""
        async with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            pending, self._pending, self._sizes = self._pending, {}, {}
            for partition, batch in pending.items():
                await self._send(partition, encode_batch(batch))
                self.records += 1
                self.inputs += len(batch)
