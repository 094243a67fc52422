"""Reads the input history back from Kafka for `loyalty what-if` and `loyalty replay`.

The source is the input topics themselves (`receipts`, `customer-events`,
`status-commands`), not PostgreSQL: PostgreSQL keeps what the pipeline made
(status changes, offers, messages, current state), never the receipts, so only the
topics can be run through other rules. Keep their retention at least as long as
the history a what-if should see (`retention.ms=-1`, or tiered storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from models.errors import InvalidInput
from models.history import HistoryRecord, PackedRecords, Source
from models.inputs import decode_object
from streams.transport import DEFAULT_FETCH_MAX_WAIT_MS, true_end_offsets

#: Records that arrived up to this long before `since` are read too: a till's clock may run fast.
CLOCK_SKEW = timedelta(days=1)
_TIME_FIELDS = {Source.RECEIPTS: "issued_at", Source.CUSTOMER_EVENTS: "occurred_at"}


@contextlib.contextmanager
def replaying() -> Iterator[None]:
    """Runs a replay without Python's cycle collector.

    A replay keeps every customer's state alive and creates no reference cycles (its
    objects die by reference counting), yet each full collection walks every live
    object: the more customers rebuilt, the more of the replay's time went to finding
    nothing. What
    exists already (the history read) is frozen out of later collections too, which
    also keeps forked children from copying its pages; the collector is switched back
    on after. What the replay made then joins the oldest generation at once (frozen and
    unfrozen, two list splices): left in the youngest, the next few collections would
    each walk all of it (0.43 s for 9,000,000 objects, then again in each older one).
    """
    was_enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if was_enabled:
            gc.enable()


@dataclass(repr=False)
class History:
    records: Sequence[HistoryRecord]  # PackedRecords as read_history reads them
    #: Per input partition, the offset after the last record read: where a worker that
    #: takes over from this history must start.
    ends: dict[TopicPartition, int]

    def __repr__(self) -> str:
        # Short: on Python 3.11, asyncio.run reprs its main task, result and all, twice as it
        # ends (CPython issue 112559), and `loyalty what-if` runs read_history so. The
        # default repr of a month's records spent 20 s of a 38 s read of 1,000,000 receipts.
        return f"History({len(self.records):,} records, up to the ends of {len(self.ends)} partitions)"


@contextlib.asynccontextmanager
async def reading(bootstrap: str, **options: Any) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer without automatic commits, stopped afterwards."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **options)
    await consumer.start()
    # aiokafka 0.14 raises CancelledError from stop() when its coordinator's task has not
    # run yet (a consumer stopped straight after start, as for a topic that does not exist).
    await asyncio.sleep(0)
    try:
        yield consumer
    finally:
        await consumer.stop()


async def read_history(
    bootstrap: str,
    topics: Mapping[Source, str],
    *,
    since: datetime | None = None,
    fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS,
) -> History:
    """Every record of the input topics up to their ends as of now, in arrival order across topics.

    `since` limits the receipts only: customer events and commands are read from the
    beginning, because who is registered, whose card is whose and who was excluded do
    not start over with a period.

    Within a partition the order is the log's; across partitions and topics records
    are merged by the broker's timestamp, which is how a worker reading them all
    at once would have interleaved them.

    The fetch wait defaults to the workers' (50 ms): a shorter one reads nothing near the
    end of a long log on Tansu (docs/operations.md, the embedded broker).
    """
    async with reading(
        bootstrap, fetch_max_wait_ms=fetch_max_wait_ms, max_partition_fetch_bytes=8 * 1024 * 1024
    ) as consumer:
        source_of: dict[str, Source] = {name: source for source, name in topics.items()}
        partitions = []
        for name in topics.values():
            for number in sorted(consumer.partitions_for_topic(name) or ()):
                partitions.append(TopicPartition(name, number))
        if not partitions:
            return History(PackedRecords(), {})
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        receipts = [tp for tp in partitions if source_of[tp.topic] is Source.RECEIPTS]
        if since is not None and receipts:
            found = await consumer.offsets_for_times(
                {tp: int((since - CLOCK_SKEW).timestamp() * 1000) for tp in receipts}
            )
            for tp in receipts:
                at = found.get(tp)
                if at is not None and at.timestamp >= 0:
                    consumer.seek(tp, at.offset)
                else:  # nothing that recent (Tansu says so with offset 0 and timestamp -1)
                    await consumer.seek_to_end(tp)
        ends = await log_ends(consumer, bootstrap, partitions)
        # Per partition, its values and timestamps: merged and packed at the end, no record objects made.
        values: dict[TopicPartition, list[bytes]] = {tp: [] for tp in partitions}
        stamps: dict[TopicPartition, list[float]] = {tp: [] for tp in partitions}
        waiting = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        clock = asyncio.get_running_loop().time
        progressed = clock()
        while waiting:
            batches = await consumer.getmany(*waiting, timeout_ms=500)
            if batches:
                progressed = clock()
            elif clock() - progressed > STALL_SECONDS:
                raise TimeoutError(await _stalled(consumer, waiting, ends, fetch_max_wait_ms))
            for tp, messages in batches.items():
                end, add_value, add_stamp = ends[tp], values[tp].append, stamps[tp].append
                for message in messages:
                    if message.offset >= end:
                        break
                    if message.value is not None:
                        add_value(message.value)
                        add_stamp(message.timestamp / 1000)
            for tp in list(waiting):
                if await consumer.position(tp) >= ends[tp]:
                    waiting.discard(tp)
                    consumer.pause(tp)
        parts = [(source_of[tp.topic], values[tp], stamps[tp]) for tp in partitions]
        return History(PackedRecords.merged(parts), dict(ends))


#: How long a read may go without a record before it gives up, rather than hang.
STALL_SECONDS = 60.0


async def _stalled(
    consumer: AIOKafkaConsumer, waiting: set[TopicPartition], ends: Mapping[TopicPartition, int], wait_ms: int
) -> str:
    where = [f"{tp.topic}[{tp.partition}] at {await consumer.position(tp)} of {ends[tp]}" for tp in sorted(waiting)]
    at = ", ".join(where)
    return (
        f"no record arrived for {STALL_SECONDS:.0f}s while reading the history ({at}). A Tansu broker answers "
        f"a fetch with nothing when it cannot find the offset within the fetch's max wait ({wait_ms} ms); "
        "raise KAFKA_FETCH_MAX_WAIT_MS"
    )


async def log_ends(
    consumer: AIOKafkaConsumer, bootstrap: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """Each partition's end now, checked against the records there (Tansu reports less:
    streams/transport.true_end_offsets)."""
    if not partitions:
        return {}
    reported = await consumer.end_offsets(partitions)
    checked = await true_end_offsets(bootstrap, {TP(tp.topic, tp.partition): end for tp, end in reported.items()})
    return {TopicPartition(tp.topic, tp.partition): end for tp, end in checked.items()}


def event_time(record: HistoryRecord) -> datetime | None:
    """When the input happened by its own account (issued_at, occurred_at), or its arrival for a
    command; None when that cannot be read (the replayer refuses such a record itself)."""
    field = _TIME_FIELDS.get(record.source)
    if field is None:
        return datetime.fromtimestamp(record.timestamp).astimezone()
    try:
        # The replayer's own reading (orjson, the stdlib for what orjson refuses): a quarter
        # of the stdlib's time alone, and a month is millions of records.
        value = decode_object(record.value).get(field)
        if not isinstance(value, str):
            return None
        at = datetime.fromisoformat(value)
    except (InvalidInput, ValueError):
        return None
    return at if at.tzinfo is not None else None


def within(records: Iterable[HistoryRecord], start: datetime | None, end: datetime | None) -> Iterator[HistoryRecord]:
    """The receipts whose event time is in [start, end), other inputs before `end`; unreadable
    ones too (the replayer refuses and counts them)."""
    if start is None and end is None:
        yield from records  # no window: nothing to read
        return
    for record in records:
        at = event_time(record)
        if at is not None and record.source is not Source.RECEIPTS:
            if end is None or at < end:
                yield record
            continue
        if at is None or ((start is None or at >= start) and (end is None or at < end)):
            yield record
