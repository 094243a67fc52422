"""Faust aiokafka transport with a configurable consumer ``fetch_max_wait_ms``.

Faust's aiokafka driver hard-codes ``fetch_max_wait_ms=1500``.  Real Kafka
answers a fetch as soon as data arrives, so that only bounds idle polling; Tansu
holds the fetch until the wait expires, so 1.5 s there would be added to every
hop.  The consumer also runs on the worker's event loop, not in a thread of its own
(`ConsumerThread`), and hands the live path its fetches (`Consumer`).

Importing this module registers the URL scheme ``kafka-fetchwait``; the wait is
taken from the broker URL's query string (the same way Faust's redis cache
backend reads its options), so it flows in from settings like the address::

    import streams.transport  # registers the scheme

    app = faust.App(
        "loyalty",
        broker=broker_url(settings.kafka_bootstrap, fetch_max_wait_ms=10),
        # == "kafka-fetchwait://127.0.0.1:9092?fetch_max_wait_ms=10"
    )

Without the query parameter ``DEFAULT_FETCH_MAX_WAIT_MS`` applies.  Only the
first broker URL's query is read (``broker`` may list several hosts).  The
value is applied to both worker and client-only consumers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from functools import cached_property
from typing import Any, ClassVar, cast

import aiokafka
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.transport.drivers.aiokafka import server_list
from faust.types import TP, ConsumerT
from yarl import URL

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FETCH_MAX_WAIT_MS",
    "FETCH_MAX_WAIT_PARAM",
    "SCHEME",
    "Consumer",
    "ConsumerThread",
    "Transport",
    "broker_url",
]

SCHEME = "kafka-fetchwait"
FETCH_MAX_WAIT_PARAM = "fetch_max_wait_ms"
DEFAULT_FETCH_MAX_WAIT_MS = 50


def broker_url(bootstrap: str, *, fetch_max_wait_ms: int) -> str:
    """Build a ``broker=`` URL for this transport from ``host:port[,host:port]``."""
    if fetch_max_wait_ms < 0:
        raise ValueError(f"fetch_max_wait_ms must be >= 0, got {fetch_max_wait_ms}")
    hosts = [h.strip() for h in bootstrap.replace(";", ",").split(",") if h.strip()]
    if not hosts:
        raise ValueError("bootstrap must name at least one host:port")
    first, *rest = hosts
    urls = [f"{SCHEME}://{first}?{FETCH_MAX_WAIT_PARAM}={fetch_max_wait_ms}"]
    urls += [f"{SCHEME}://{host}" for host in rest]
    return ";".join(urls)


class InLoop:
    """What mode's `WorkerThread` is to a service thread, without the thread: the service runs
    as a task of the loop that starts it (see `ConsumerThread`)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.task: asyncio.Future[None] | None = None  # held: the loop keeps only weak references

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.service._serve())

    def stop(self) -> None:
        return None  # the task ends by itself once the service has stopped


class ConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer, run on the worker's own event loop rather than in a thread.

    Faust gives the consumer a thread with a loop of its own. The live path does all its
    work on the main loop, so the two threads took turns with the GIL: py-spy showed
    the main loop's thread waiting for it for about 7% of its samples while it drained a
    backlog, and the consumer's thread waiting for it more than it ran. Here the same
    service runs as a task of the main loop (`InLoop`): every call Faust makes "in the
    thread" goes through the same method queue, served on the same loop.
    """

    Worker = InLoop  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("thread_loop", kwargs.get("loop") or asyncio.get_event_loop())
        super().__init__(*args, **kwargs)

    async def _gather_remaining_tasks(self) -> None:
        # mode cancels every task left on the thread's loop when the thread ends; that loop is
        # the worker's own here, whose shutdown gathers its tasks itself.
        return None

    def _create_consumer(self, loop: asyncio.AbstractEventLoop) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_consumer(loop)
        # AIOKafkaConsumer only builds its Fetcher in start(), from this attribute.
        consumer._fetch_max_wait_ms = cast(Transport, self.transport).fetch_max_wait_ms
        return consumer

    async def getmany(self, active_partitions: Any, timeout: float) -> Any:
        records = await super().getmany(active_partitions, timeout)
        if self._fault is not None:
            records = self._fault.apply(records)
        return records

    @cached_property
    def _fault(self) -> DropOnce | None:
        return DropOnce.from_env()

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        reported = await super()._highwaters(partitions)
        transport = cast(Transport, self.transport)
        bootstrap = server_list(transport.url, transport.default_port)
        return await true_end_offsets(bootstrap, reported)


#: How long a probe's fetch of a partition's last batch may wait (see true_end_offsets).
_TAIL_FETCH_WAIT_MS = 1000


async def true_end_offsets(bootstrap: str | list[str], reported: Mapping[TP, int]) -> dict[TP, int]:
    """End offsets checked against the records really there.

    Tansu reports a partition's end offset as the last batch's *first* offset + 1,
    so when the last batch holds several records (as changelog writes often do)
    Faust's table recovery stops early and silently loses the newest writes. A
    fetch from `end - 1` returns that whole last batch, whose last offset + 1 is
    the true end. On Apache Kafka the answer is the reported end, unchanged.

    The fetch may wait long (`_TAIL_FETCH_WAIT_MS`): Tansu's memory storage takes longer to
    find an offset the longer the partition, and a fetch whose max wait runs out first is
    answered with no records. With 750k records in each of 4 partitions, every fetch from
    `end - 1` with a 10 ms wait came back empty for minutes, while with 50 ms or more the
    last batch came at once (0.1 s). The record at `end - 1` is there, so neither broker
    makes the fetch wait for it.
    """
    suspect = {tp: end for tp, end in reported.items() if end and end > 0}
    if not suspect:
        return dict(reported)
    checked = dict(reported)
    probe = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=_TAIL_FETCH_WAIT_MS,
    )
    await probe.start()
    try:
        probe.assign([aiokafka.TopicPartition(tp.topic, tp.partition) for tp in suspect])
        for tp, end in suspect.items():
            probe.seek(aiokafka.TopicPartition(tp.topic, tp.partition), end - 1)
        pending = set(suspect)
        deadline = asyncio.get_running_loop().time() + 30.0
        while pending and asyncio.get_running_loop().time() < deadline:
            batches = await probe.getmany(timeout_ms=200)
            for tp in list(pending):
                records = batches.get(aiokafka.TopicPartition(tp.topic, tp.partition))
                if records:
                    checked[tp] = max(checked[tp], records[-1].offset + 1)
                    pending.discard(tp)
        if pending:
            seen = []
            for tp in sorted(pending):
                partition = aiokafka.TopicPartition(tp.topic, tp.partition)
                at, high = await probe.position(partition), probe.highwater(partition)
                seen.append(f"{tp.topic}[{tp.partition}]: reported {suspect[tp]}, at {at}, high watermark {high}")
            detail = ", ".join(seen)
            raise TimeoutError(f"could not read the last records to check their end offsets ({detail})")
    finally:
        await probe.stop()
    return checked


class DropOnce:
    """Fault injection for the fault tests: records fetched from the broker and lost before
    Faust hands them on, once, as a fetch cancelled around a rebalance loses them (the live
    path finds the hole and reads the partition again: streams/intake.py).

    `LOYALTY_FAULT_DROP_RECORDS=topic:partition:first:count` drops the records at offsets
    `first` to `first + count - 1` of that partition the first time they are fetched; read
    again after a seek back, they pass. Unset in production.
    """

    ENV = "LOYALTY_FAULT_DROP_RECORDS"

    def __init__(self, topic: str, partition: int, first: int, count: int) -> None:
        self.topic, self.partition, self.first, self.end = topic, partition, first, first + count
        self.dropped: set[int] = set()

    @classmethod
    def from_env(cls) -> DropOnce | None:
        spec = os.environ.get(cls.ENV)
        if not spec:
            return None
        topic, partition, first, count = spec.rsplit(":", 3)
        return cls(topic, int(partition), int(first), int(count))

    def apply(self, records: Any) -> Any:
        if len(self.dropped) >= self.end - self.first:
            return records
        for tp, batch in records.items():
            if tp.topic == self.topic and tp.partition == self.partition:
                kept = []
                for record in batch:
                    if self.first <= record.offset < self.end and record.offset not in self.dropped:
                        self.dropped.add(record.offset)
                        logger.warning("fault injection: dropped %s[%d]@%d", tp.topic, tp.partition, record.offset)
                    else:
                        kept.append(record)
                records[tp] = kept
        return records


class NoReadOffsets(dict[TP, int | None]):
    """Faust's per-partition "read offset", kept empty.

    Faust's fetcher drops a record below the offset it last handed on, as already read.
    After a seek back that also drops the records the seek asked for, whenever a batch
    fetched before the seek is still being handed on (it moves the read offset past
    them): a partition sought back over a hole then never got it (streams/intake.py).
    Here nothing is dropped; the live path takes what it has seen before as the copies
    they know how to handle, and Faust's gap filling, which needs a read offset, never
    starts either.
    """

    def __getitem__(self, tp: TP) -> None:
        return None

    def __setitem__(self, tp: TP, offset: int | None) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


class Consumer(aiokafka_driver.Consumer):
    """The stock consumer, except that it fills no hole in a partition's offsets by itself.

    When Faust's fetcher hands on a record more than one past the last it handed on, it
    records the offsets between as a gap and counts them acknowledged, as for a compacted
    topic or a transaction marker, so commits pass them. Around a rebalance such a hole
    is also what a stale batch leaves (streams/intake.py): records never processed,
    committed. Here only a gap confirmed (the broker's first record after a seek
    back, `confirm_gap`) is filled.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = NoReadOffsets()

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        """A fetch, of which the live path (`app.intake`, streams/intake.py) takes the input
        topics' records in batches: only the rest (the table's changelog) reaches Faust."""
        records = await super()._getmany(active_partitions, timeout)
        intake = getattr(self.app, "intake", None)
        if intake is None or not records:
            return records
        return await intake.divert(records)

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Before Faust lets partitions go, the live path commits what it has taken of them."""
        intake = getattr(self.app, "intake", None)
        if intake is not None:
            await intake.revoke(revoked)
        await super().on_partitions_revoked(revoked)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        return None

    async def confirm_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Offsets `offset_from` to `offset_to` (inclusive) hold no records: commits may pass them."""
        await super()._add_gap(tp, offset_from, offset_to)


class Transport(aiokafka_driver.Transport):
    """aiokafka transport whose consumer fetch wait comes from the broker URL."""

    Consumer: ClassVar[type[ConsumerT]] = Consumer

    @property
    def fetch_max_wait_ms(self) -> int:
        return _fetch_max_wait_from(self.url[0])


def _fetch_max_wait_from(url: URL) -> int:
    raw = url.query.get(FETCH_MAX_WAIT_PARAM)
    if raw is None:
        return DEFAULT_FETCH_MAX_WAIT_MS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{FETCH_MAX_WAIT_PARAM} in broker URL must be an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{FETCH_MAX_WAIT_PARAM} must be >= 0, got {value}")
    return value


# Faust resolves ``broker=`` URLs through this registry by scheme.  A packaged
# install could use the ``faust.transports`` entry-point group instead.
TRANSPORTS[SCHEME] = f"{__name__}:Transport"
