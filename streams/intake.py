"""The live path: the worker's inputs a batch at a time, below Faust's per-event streams.

Faust runs the consumer group, the customers table (its recovery from the changelog
before a partition is served), the web server and the timers. The records of the
four input topics never reach Faust's streams: the consumer hands every fetched batch
to `Intake.divert` (streams/transport.py), which takes them, a partition at a time,
through the partition processor (models/processor.py):

    receipts[p] ──┬─ on its customer's partition (our partitioner is Kafka's default) ─────┐
                  └─ elsewhere, or naming only a card ──► loyalty-inputs[q]               │
    customer-events, status-commands ──► loyalty-inputs[q] (a close, a campaign run: all) │
    loyalty-inputs[p] ─────────────────────────────────────────────────────────────────── ┴─► processor(p)
                                                                 │
          status-changes, offer-triggers, receipt-messages ◄─────┤ per batch, to the producer's batches
          customer-status (each customer's latest, per commit) ◄─┤
          loyalty-inputs (what the processor hands on) ◄─────────┘

Where `receipts` has another number of partitions than the table, every receipt goes
through `loyalty-inputs`. A commit (`commit`) runs every `loyalty_commit_interval`:
the states the inputs changed are encoded once each; when every event made so far is
delivered, they go to the table and its changelog; when those are delivered, the
inputs' offsets are committed. A worker killed at any point therefore restarts from
states that never run ahead of their events, and takes the inputs after the last
commit again: the receipt ids a state remembers, and the source positions of
`loyalty-inputs` (streams/positions.py), make those repeats change nothing.

An input whose processing raises anything but a refusal (a bug) is dead-lettered with
the exception, and its partition is rewound to its last commit: its states as then,
its topics sought back; the partition's inputs are then taken again without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from aiokafka.errors import KafkaError
from faust.types import TP
from prometheus_client import Counter

from models.dead_letters import dead_letter
from models.errors import InvalidInput
from models.events import Output, OutputKind
from models.inputs import (
    PARTITION_KEY_PREFIX,
    RECEIPT_KEY_PREFIX,
    ClosePeriod,
    SetStatus,
    customer_of_receipt_key,
    parse_command,
    parse_customer_event,
)
from models.processor import (
    CLOSE_PERIOD,
    RUN_CAMPAIGNS,
    SET_STATUS,
    TICK,
    Input,
    Origin,
    Outcome,
    TableProcessor,
    event_input,
)
from models.records import DeadRecord, FailedRecord, parse_all, route_receipts, send_events, send_snapshots, take_all
from streams.app import Pipeline
from streams.collector import Collector
from streams.envelope import (
    Envelope,
    decode_inputs,
    default_partition,
    encode_batch,
    envelope_of,
    input_of,
    partition_for,
)
from streams.live import LiveStates
from streams.positions import SourcePositions, positions_key
from streams.sending import Outbox
from streams.store import backing_for
from streams.transport import Consumer

#: An input and the partition it goes to (None: every partition).
Routed = tuple[Input, int | None]

logger = logging.getLogger(__name__)

#: Failures of the broker or the network while an input is processed: not the input's fault, so
#: never its dead letter. They stop the worker; a restart reads the input again.
NOT_THE_INPUT = (KafkaError, OSError, asyncio.TimeoutError)
PARTITION_PREFIX = PARTITION_KEY_PREFIX.encode()  # a partition's own keys: frontier, source positions
RECEIPT_PREFIX = RECEIPT_KEY_PREFIX.encode()  # the receipt store's keys, on their customer's partition
#: Records taken before the event loop runs again (about 15 ms of work here).
SLICE = 100
#: Seconds a commit may wait before it is logged as stalled (and again each time as long).
COMMIT_STALLED = 10.0
#: Customers a close walk looks at between batches, at most, and for at most this long.
WALK_SLICE = 2000
WALK_SECONDS = 0.005

_SNAPSHOT = OutputKind.CUSTOMER_STATUS


class Intake:
    """Takes the input topics' records in batches through the partition processor, publishes
    what it makes, and commits (see the module docstring)."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.app, self.config, self.metrics, self.clock = p.app, p.config, p.metrics, p.clock
        self.partitions = p.partitions
        self.receipts = p.receipts.get_topic_name()
        self.customer_events = p.customer_events.get_topic_name()
        self.status_commands = p.status_commands.get_topic_name()
        self.inputs = p.inputs.get_topic_name()
        self.topics = frozenset({self.receipts, self.customer_events, self.status_commands, self.inputs})
        self.out_names = {
            OutputKind.STATUS_CHANGE: p.status_changes.get_topic_name(),
            OutputKind.OFFER_TRIGGER: p.offer_triggers.get_topic_name(),
            OutputKind.RECEIPT_MESSAGE: p.receipt_messages.get_topic_name(),
            OutputKind.CUSTOMER_STATUS: p.customer_status.get_topic_name(),
        }
        self.dead_letters = p.dead_letters.get_topic_name()
        self.changelog = p.customers.changelog_topic.get_topic_name()
        partitions = p.partitions
        self.live = LiveStates(
            backing_for(p.settings.loyalty_store, p.customers, lambda key: table_partition(key, partitions)),
            capacity=p.settings.loyalty_state_cache,
            last=lambda key: key.startswith(PARTITION_PREFIX),
            partition_of=lambda key: table_partition(key, partitions),
        )
        p.customers.on_restored = self.live.restored
        self.processor = TableProcessor(
            p.config,
            lambda key: partition_for(key, p.partitions),
            p.partitions,
            table=self.live,
            spill_receipts=True,
        )
        self.outbox = Outbox(
            lambda: cast(Any, self.app.producer)._ensure_producer(),
            self._send_failed,
            max_record_bytes=self.app.conf.producer_max_request_size,
        )
        self.commit_interval = p.settings.loyalty_commit_interval
        self.collector = Collector()
        self.walk_every = p.settings.loyalty_walk_every
        self.walked_at = 0.0  # when a walk slice last ran (perf_counter)
        self.started = asyncio.Event()
        self.lock = asyncio.Lock()  # one batch (or timer's work) at a time
        self.commit_lock = asyncio.Lock()  # one commit at a time
        self.receipts_local = False  # receipts on their customer's partition are taken where they are
        self.next_offset: dict[TP, int] = {}  # per input partition, the next offset to take
        self.base_offset: dict[TP, int] = {}  # per input partition, where the last snapshot leaves it
        self.sought: dict[TP, int] = {}  # partitions sought back over a hole, and to where
        self.ready: set[int] = set()  # table partitions whose frontier is restored
        self.positions: dict[int, SourcePositions] = {}
        self.changed_positions: set[int] = set()
        self.snapshots: dict[str | None, Output] = {}  # each customer's latest customer-status, until the commit
        self.poison: set[tuple[str, str, int, int]] = set()  # (kind, topic, partition, offset) dead-lettered
        self.broken: set[int] = set()  # partitions to rewind
        self.last_input: dict[int, float] = {}  # partition -> monotonic time of its last input
        self.last_commit = time.monotonic()
        self.committing: asyncio.Future[None] | None = None
        self.commit_step = "nothing (none began)"  # what the commit under way waits for
        self.stall_logged = 0.0
        #: Counts revocations: a fetch taken in slices stops at the first one after a revocation.
        self.generation = 0
        self.routed_from = frozenset({self.receipts, self.customer_events, self.status_commands})

    # --- the consumer's hand-over -----------------------------------------------------------

    async def start(self) -> None:
        """Learns the topics' partitions; the first batch waits for this."""
        await self.outbox.prepare([*self.out_names.values(), self.dead_letters, self.inputs, self.receipts])
        self.receipts_local = self.outbox.partitions(self.receipts) == self.partitions
        if not self.receipts_local:
            logger.warning(
                "%s has %d partitions and the customers table %d: every receipt goes through %s",
                self.receipts,
                self.outbox.partitions(self.receipts),
                self.partitions,
                self.inputs,
            )
        self.collector.start()
        self.started.set()

    async def divert(self, records: Mapping[TP, Sequence[Any]]) -> dict[TP, Sequence[Any]]:
        """Takes the input topics' records of a fetch; returns the rest (the table's changelog
        during recovery) for Faust. Called by the consumer's fetch loop, one fetch at a time."""
        ours = {tp: batch for tp, batch in records.items() if tp.topic in self.topics}
        if not ours:
            return dict(records)
        await self.started.wait()
        # Shielded: the fetcher may be cancelled (at shutdown) while a batch is half taken.
        await asyncio.shield(self._take(ours))
        return {tp: batch for tp, batch in records.items() if tp.topic not in self.topics}

    async def revoke(self, revoked: Iterable[TP]) -> None:
        """Before partitions are handed over: everything taken so far committed, then let go."""
        await self.commit()
        async with self.lock:
            self.generation += 1
            self.live.drop_partitions(tp.partition for tp in revoked if tp.topic == self.inputs)
            for tp in revoked:
                self.next_offset.pop(tp, None)
                self.base_offset.pop(tp, None)
                self.sought.pop(tp, None)
                if tp.topic == self.inputs:
                    self.ready.discard(tp.partition)
                    self.processor.forget(tp.partition)
                    self.positions.pop(tp.partition, None)
                    self.last_input.pop(tp.partition, None)
                    with contextlib.suppress(KeyError):
                        self.metrics.close_walk.remove(str(tp.partition))

    # --- a batch ------------------------------------------------------------------------------

    async def _take(self, batches: Mapping[TP, Sequence[Any]]) -> None:
        """A fetch, in slices of about `SLICE` records: between two, the event loop runs (the
        producer, the timers, a commit, a scrape of /metrics), and the first answers leave.
        Each slice takes a share of every partition's records, in their order.

        A revocation between two slices ends the fetch: the rest belongs to an assignment that
        is over, even where the same partitions come back (their table may be in recovery then,
        and what recovery restores would overwrite what the rest changed). The new assignment
        reads them again from their commits."""
        share = max(SLICE // len(batches), 1)
        longest = max(len(records) for records in batches.values())
        generation = self.generation
        for start in range(0, longest, share):
            part = {tp: records[start : start + share] for tp, records in batches.items() if len(records) > start}
            if not await self._take_slice(part, generation):
                logger.info("a rebalance began: the rest of a fetch is read again from the commits")
                return
            await asyncio.sleep(0)

    async def _take_slice(self, batches: Mapping[TP, Sequence[Any]], generation: int) -> bool:
        """Takes a slice; False when the fetch it is from is stale (a rebalance began since)."""
        async with self.lock:
            consumer = cast(Consumer, self.app.consumer)
            if not consumer.flow_active or self.generation != generation:
                return False  # a rebalance began: the partitions are read again from their commits
            assignment = consumer.assignment()
            now = self.clock.now()
            started = time.perf_counter()
            work: dict[int, list[list[Input]]] = {}
            forwards: dict[int, list[Envelope]] = {}
            dead: list[DeadRecord] = []
            for tp, records in batches.items():
                if tp not in assignment:
                    continue
                records = await self._in_order(tp, records)
                if not records:
                    continue  # (an empty list is what a fetch lost to a fault leaves too)
                self.base_offset.setdefault(tp, records[0].offset)
                if tp.topic == self.inputs:
                    work.setdefault(tp.partition, []).append(self._from_inputs(tp, records, now, dead))
                elif tp.topic == self.receipts:
                    local = self._receipts(tp, records, now, forwards, dead)
                    if local:
                        work.setdefault(tp.partition, []).append(local)
                elif tp.topic == self.customer_events:
                    refused = self.metrics.customer_events.labels("unknown", "dead_letter")
                    self._forwarded(tp, records, self._customer_event_input, refused, now, forwards, dead)
                else:
                    refused = self.metrics.commands.labels("unknown", "dead_letter")
                    self._forwarded(tp, records, self._command_input, refused, now, forwards, dead)
                self.next_offset[tp] = records[-1].offset + 1
            out = Outcome()
            taken = 0
            for partition, sources in work.items():
                self._make_ready(partition)
                items = sources[0] if len(sources) == 1 else list(heapq.merge(*sources, key=_arrival))
                if any(item.kind != TICK for item in items):
                    self.last_input[partition] = time.monotonic()
                taken += self._process(partition, items, out)
            self._walk(out)
            self._publish(out, forwards, dead)
            if taken:
                self.metrics.processing.observe((time.perf_counter() - started) / taken)
        if self.broken:
            await self._rewind()
        self.commit_soon()
        return True

    async def _in_order(self, tp: TP, records: Sequence[Any]) -> Sequence[Any]:
        """The records that come next on their partition: copies of records taken already are
        skipped, and a batch past a hole (records fetched and lost to a cancelled fetch) is not
        taken: the partition is sought back, once; if the broker's next record is still past
        the hole, the hole is real (a transaction marker, records deleted)."""
        expected = self.next_offset.get(tp)
        if expected is None or not records:
            return records
        first = records[0].offset
        if first > expected:
            if self.sought.pop(tp, None) == expected:
                logger.info("%s[%d]: offsets %d to %d hold no records", tp.topic, tp.partition, expected, first - 1)
                return records
            self.sought[tp] = expected
            self.metrics.rewinds.labels(tp.topic).inc()
            logger.warning(
                "%s[%d]: record %d came when %d was expected; not taken, the partition is read again from %d",
                tp.topic,
                tp.partition,
                first,
                expected,
                expected,
            )
            await self.app.consumer.seek(tp, expected)
            return ()
        self.sought.pop(tp, None)
        if records[-1].offset < expected:
            return ()
        return [r for r in records if r.offset >= expected] if first < expected else records

    def _receipts(
        self,
        tp: TP,
        records: Sequence[Any],
        now: datetime,
        forwards: dict[int, list[Envelope]],
        dead: list[DeadRecord],
    ) -> list[Input]:
        """The receipts of a `receipts` partition: those on their customer's partition to take
        here, the others handed on to the partition of their customer or card."""
        routed = route_receipts(
            records, tp.topic, tp.partition, self.config, now, self.processor, self.receipts_local, NOT_THE_INPUT
        )
        refused = self.metrics.child(self.metrics.receipts, "unknown", "dead_letter")
        self._dead_letters(routed.refused, routed.failed, refused, dead)
        for target, item in routed.away:
            forwards.setdefault(target, []).append(envelope_of(item))
        return routed.here

    def _forwarded(
        self,
        tp: TP,
        records: Sequence[Any],
        parse: Callable[[bytes | None, Origin, datetime], Routed],
        refused: Counter,
        now: datetime,
        forwards: dict[int, list[Envelope]],
        dead: list[DeadRecord],
    ) -> None:
        """Customer events and commands: each to its customer's partition, or to every
        partition (a period closes, a campaign runs, for every customer: each partition does its own)."""
        parsed = parse_all(
            records, tp.topic, tp.partition, lambda value, origin: parse(value, origin, now), NOT_THE_INPUT
        )
        self._dead_letters(parsed.refused, parsed.failed, refused, dead)
        for item, target in parsed.parsed:
            envelope = envelope_of(item)
            for partition in range(self.partitions) if target is None else (target,):
                forwards.setdefault(partition, []).append(envelope)

    def _dead_letters(
        self, refused: list[DeadRecord], failed: list[FailedRecord], counter: Counter, dead: list[DeadRecord]
    ) -> None:
        """A fetch's records that were not taken, to the dead letters: those refused (invalid
        inputs, counted in `counter`) and those whose parsing failed (a bug, logged)."""
        if refused:
            counter.inc(len(refused))
            dead.extend(refused)
        for value, key, origin, exc in failed:
            dead.append(self._failure(value, key, origin, exc))

    def _customer_event_input(self, raw: bytes | None, origin: Origin, now: datetime) -> Routed:
        key, item = event_input(parse_customer_event(raw, self.config, now), raw, origin)
        return item, partition_for(key, self.partitions)

    def _command_input(self, raw: bytes | None, origin: Origin, now: datetime) -> Routed:
        command = parse_command(raw, self.config, _instant(origin.timestamp))
        if isinstance(command, SetStatus):
            return Input(SET_STATUS, command, raw, origin), partition_for(command.customer_id, self.partitions)
        kind = CLOSE_PERIOD if isinstance(command, ClosePeriod) else RUN_CAMPAIGNS
        return Input(kind, command, raw, origin), None

    def _from_inputs(
        self,
        tp: TP,
        records: Sequence[Any],
        now: datetime,
        dead: list[DeadRecord],
    ) -> list[Input]:
        """A `loyalty-inputs` partition's inputs, but the copies of inputs taken already: an
        input routed from a source partition at or below the highest offset this partition has
        taken from it came again after the router restarted (streams/positions.py)."""
        items: list[Input] = []
        partition = tp.partition
        positions = self._positions(partition)
        for record in records:
            try:
                envelopes = decode_inputs(record.value)
            except Exception as exc:  # not written by a worker: nothing in it can be taken
                where = Origin(tp.topic, partition, record.offset, record.timestamp / 1000)
                dead.append(self._failure(record.value, record.key, where, exc))
                continue
            for envelope in envelopes:
                source = envelope.source
                if not envelope.forwarded and source.topic in self.routed_from:
                    if positions.taken(source):
                        self.metrics.input_copies.inc()
                        continue
                    positions.take(source)
                    self.changed_positions.add(partition)
                try:
                    items.append(input_of(envelope, self.config, now))
                except InvalidInput as exc:
                    dead.append((envelope.raw, None, source, str(exc)))
                except NOT_THE_INPUT:
                    raise
                except Exception as exc:
                    dead.append(self._failure(envelope.raw, None, source, exc))
        return items

    def _process(self, partition: int, items: Sequence[Input], out: Outcome) -> int:
        """Takes a partition's inputs in order; returns how many. An input whose processing
        raises (a bug) is dead-lettered and the partition marked for a rewind (`_rewind`)."""
        taken = take_all(self.processor, partition, items, out, self.poison, NOT_THE_INPUT)
        if taken.failed is not None:
            assert taken.failed.origin is not None and taken.error is not None
            self._failed(taken.failed.origin, taken.error)
            self.broken.add(partition)
        if taken.sent_at:  # the batch's ages counted at once
            now = time.time()
            self.metrics.end_to_end.observe_many([max(now - sent, 0.0) for sent in taken.sent_at])
        return taken.count

    # --- what a batch made ----------------------------------------------------------------------

    def _publish(
        self,
        out: Outcome,
        forwards: dict[int, list[Envelope]],
        dead: list[DeadRecord],
    ) -> None:
        add, metrics = self.outbox.add, self.metrics
        sent = send_events(out.outputs, self.snapshots, self.out_names, add)
        for kind, count in sent.kinds.items():
            metrics.child(metrics.events, kind.value).inc(count)
        for change, count in sent.changes.items():
            metrics.child(metrics.status_changes, *change).inc(count)
        for offer_id, count in sent.offers.items():
            metrics.child(metrics.offers, offer_id).inc(count)
        for owner, item in out.forwards:
            forwards.setdefault(partition_for(owner, self.partitions), []).append(envelope_of(item))
        for partition, envelopes in forwards.items():
            add(self.inputs, None, encode_batch(envelopes), partition)
        for item, error in out.refused:
            assert item.origin is not None
            dead.append((item.raw, None, item.origin, error))
        for raw, record_key, origin, error in dead:
            logger.warning("dead letter from %s[%d]@%d: %s", origin.topic, origin.partition, origin.offset, error)
            metrics.dead_letters.labels(origin.topic).inc()
            letter = dead_letter(raw, record_key, origin.topic, origin.partition, origin.offset, error)
            add(self.dead_letters, record_key, letter)
        for tally, count in out.tally.items():
            what, labels = tally[0], tally[1:]
            if what == "receipts":
                metrics.child(metrics.receipts, *labels).inc(count)
            elif what == "customer_events":
                metrics.child(metrics.customer_events, *labels).inc(count)
            elif what == "commands":
                metrics.child(metrics.commands, *labels).inc(count)
            elif what == "closed":
                metrics.child(metrics.closed_by_walk, *labels).inc(count)

    def _failure(self, raw: bytes | str | None, key: bytes | None, origin: Origin, exc: Exception) -> DeadRecord:
        self._failed(origin, exc)
        return (raw, key, origin, f"{type(exc).__name__}: {exc}")

    def _failed(self, origin: Origin, exc: Exception) -> None:
        """An input whose parsing or processing raised (a bug): logged with its traceback, counted."""
        logger.error("%s[%d]@%d: processing failed", origin.topic, origin.partition, origin.offset, exc_info=exc)
        self.metrics.input_failures.labels(origin.topic).inc()

    def _send_failed(self, exc: BaseException) -> None:
        # A send that failed must not be followed by an offset commit: the worker stops here
        # and a restart reads everything after the last commit again.
        logger.critical("a send failed; stopping so nothing is committed past it: %r", exc)
        self.app._crash(exc)

    # --- partitions ---------------------------------------------------------------------------

    def _make_ready(self, partition: int) -> None:
        """A partition's first input since it was assigned (and its table recovered): its frontier
        as stored, and a walk a crash or a rebalance interrupted, taken up again."""
        if partition in self.ready:
            return
        self.processor.restore(partition, self.processor.stored_frontier(partition))
        self.ready.add(partition)

    def _positions(self, partition: int) -> SourcePositions:
        positions = self.positions.get(partition)
        if positions is None:
            stored = self.live.get(positions_key(partition), SourcePositions.from_bytes)
            positions = self.positions[partition] = stored or SourcePositions()
        return positions

    def ready_partitions(self) -> list[int]:
        """The table partitions this worker serves now: assigned, recovered, not paused."""
        app = self.app
        if app.rebalancing or app.in_recovery:
            return []
        consumer = cast(Consumer, app.consumer)
        paused = consumer._paused_partitions
        return sorted(tp.partition for tp in consumer.assignment() if tp.topic == self.inputs and tp not in paused)

    def _walk(self, out: Outcome) -> None:
        """Some of the close walks under way, between batches: at most `WALK_SECONDS`."""
        for partition, walk in self.processor.walks.items():
            self.metrics.close_walk.labels(str(partition)).set(walk.remaining)
        if not self.processor.walks or time.perf_counter() - self.walked_at < self.walk_every:
            return
        deadline = time.perf_counter() + WALK_SECONDS
        for partition in list(self.processor.walks):
            while time.perf_counter() < deadline:
                if self.processor.walk(partition, WALK_SLICE, out):
                    logger.info(
                        "partition %d: periods before %s closed", partition, self.processor.frontiers[partition].periods
                    )
                    break
            walking = self.processor.walks.get(partition)
            self.metrics.close_walk.labels(str(partition)).set(walking.remaining if walking is not None else 0)
        self.walked_at = time.perf_counter()

    async def work(self, partitions: Iterable[int], do: Any) -> None:
        """A timer's work on partitions this worker serves, in turn with the batches: `do(partition, out)`."""
        async with self.lock:
            out = Outcome()
            ready = set(self.ready_partitions())
            for partition in partitions:
                if partition not in ready:
                    continue
                self._make_ready(partition)
                do(partition, out)
            self._walk(out)
            self._publish(out, {}, [])
        self.commit_soon()

    def send_tick(self, partition: int, at: datetime) -> None:
        """The wall clock's time for a partition, as its next input (streams/timers/idle.py)."""
        tick = Input(TICK, at, None, Origin("clock", partition, 0, time.time()))
        self.outbox.add(self.inputs, None, encode_batch([envelope_of(tick)]), partition)

    # --- a rewind after a bug -----------------------------------------------------------------

    async def _rewind(self) -> None:
        """Partitions where an input raised: their states as the last snapshot stored them, and
        their topics read again from where it left them (the input that raised is skipped then)."""
        async with self.commit_lock, self.lock:
            broken, self.broken = self.broken, set()
            assignment = self.app.consumer.assignment()
            for partition in broken:
                self.live.forget(self.live.dirty_keys(partition))
                self.snapshots = {
                    key: snapshot
                    for key, snapshot in self.snapshots.items()
                    if key is None or partition_for(key, self.partitions) != partition
                }
                self.positions.pop(partition, None)
                self.changed_positions.discard(partition)
                self.processor.restore(partition, self.processor.stored_frontier(partition))
                for tp in (TP(self.inputs, partition), TP(self.receipts, partition)):
                    base = self.base_offset.get(tp)
                    if tp not in assignment or base is None:
                        continue
                    self.next_offset[tp] = base
                    await self.app.consumer.seek(tp, base)
                logger.warning("partition %d rewound to its last commit", partition)

    # --- commits ------------------------------------------------------------------------------

    def commit_soon(self) -> None:
        if self.committing is not None and not self.committing.done():
            self._stalled()
            return
        if time.monotonic() - self.last_commit < self.commit_interval:
            return
        self.committing = asyncio.ensure_future(self.commit())
        self.committing.add_done_callback(self._committed)

    def _stalled(self) -> None:
        """A commit that has waited `COMMIT_STALLED` seconds is logged, with what it waits for,
        every `COMMIT_STALLED` seconds: meanwhile no snapshot, state or offset is written, and a
        restart would take everything since the last commit again."""
        now = time.monotonic()
        if now - self.last_commit < COMMIT_STALLED or now - self.stall_logged < COMMIT_STALLED:
            return
        self.stall_logged = now
        logger.warning("a commit has waited %.0f s so far, for %s", now - self.last_commit, self.commit_step)

    def _committed(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            logger.critical("a commit failed; stopping: %r", exc)
            self.app._crash(exc)

    async def commit(self) -> None:
        """Everything taken so far made durable: events delivered, then states stored in the
        table and its changelog, then the inputs' offsets committed."""
        async with self.commit_lock:
            self.last_commit = time.monotonic()
            self.commit_step = "the batch under way"
            async with self.lock:  # nothing is taken meanwhile: the snapshot covers exactly these offsets
                snapshots = send_snapshots(self.snapshots, self.out_names[_SNAPSHOT], self.outbox.add)
                if snapshots:
                    self.metrics.child(self.metrics.events, _SNAPSHOT.value).inc(snapshots)
                for partition in self.changed_positions:
                    self.live.put(positions_key(partition), self.positions[partition], partition)
                self.changed_positions.clear()
                written = self.live.snapshot()
                offsets = dict(self.next_offset)
                self.base_offset.update(offsets)
                events = self.outbox.fence()
            self.commit_step = f"the delivery of {len(events)} batches of events"
            await self.outbox.ship()
            if events:
                await asyncio.gather(*events)
            written = self.live.unrestored(written)
            for key, value, partition in written:
                self.outbox.add(self.changelog, key, value, partition)
            self.metrics.changelog_writes.inc(len(written))
            self.commit_step = f"the delivery of {len(written)} changelog records"
            await self.outbox.flush()
            delivered = self.outbox.delivered
            self.live.store(written, {p: delivered[self.changelog, p] for p in {w[2] for w in written}})
            self.collector.committed()
            if offsets:
                self.commit_step = f"the broker to commit the offsets of {len(offsets)} partitions"
                await cast(Consumer, self.app.consumer)._commit(offsets)
            self.commit_step = "nothing (done)"

    async def stop(self) -> None:
        """At shutdown: the last inputs committed."""
        if self.started.is_set():
            await self.commit()


def table_partition(key: bytes, partitions: int) -> int:
    """The table partition that holds a key: a partition's own keys (`partition:{n}...`) name
    it, any other key is hashed as the processor hashes it."""
    if key.startswith(PARTITION_PREFIX):
        return int(key[len(PARTITION_PREFIX) :].split(b":", 1)[0])
    if key.startswith(RECEIPT_PREFIX):
        return default_partition(customer_of_receipt_key(key), partitions)
    return default_partition(key, partitions)


def _arrival(item: Input) -> float:
    return item.origin.timestamp if item.origin is not None else 0.0


def _instant(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
