"""The agents: read, call the core, write the customer's state, hand events on.

    receipts ────────► ingest-receipts ──┐                    ┌─► status-changes
    customer-events ─► ingest-customer-events ├─► loyalty-inputs ──► loyalty ─┼─► offer-triggers
    status-commands ─► ingest-commands ──┘  (our partitioner)   │       └─► receipt-messages
                                                         table: customers
    anything refused ─► dead-letters

The ingest agents validate and repartition by customer id with our own
partitioner, because POS fleets use Kafka clients whose partitioners disagree;
the `customers` table and every input for a customer then meet on one partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from aiokafka.errors import KafkaError
from faust.types import TP, EventT, StreamT, TopicT

from models.campaigns import daily_run, worth_a_look
from models.cards import CardState, apply_card_event, card_key, owner_of, release
from models.dead_letters import dead_letter
from models.engine import (
    Result,
    apply_customer_event,
    apply_receipt,
    close_due,
    close_period,
    is_due,
    merge_away,
    merge_into,
    set_status,
)
from models.errors import InvalidInput
from models.events import Output, OutputKind
from models.frontier import CloseFrontier, advanced, clock_cause, next_threshold, partition_key
from models.inputs import (
    CARD_EVENTS,
    PARTITION_KEY_PREFIX,
    RESERVED_PREFIXES,
    ClosePeriod,
    RunCampaigns,
    SetStatus,
    parse_command,
    parse_customer_event,
    parse_receipt,
    validated_receipt,
)
from models.state import CustomerState
from streams.app import Pipeline
from streams.continuity import Continuity, Verdict
from streams.envelope import (
    CARD_EVENT,
    CARD_RECEIPT,
    CARD_RELEASE,
    CLOSE_PERIOD,
    CUSTOMER_EVENT,
    MERGE_AWAY,
    MERGE_IN,
    RECEIPT,
    RUN_CAMPAIGNS,
    SET_STATUS,
    TICK,
    Envelope,
    Source,
    decode_inputs,
    partition_for,
)
from streams.live import LiveStates
from streams.ordering import ChangelogGate
from streams.outbox import InputBatches
from streams.positions import SourcePositions, positions_key
from streams.sending import Outbox
from streams.transport import Consumer, Producer

logger = logging.getLogger(__name__)
RESERVED = tuple(prefix.encode() for prefix in RESERVED_PREFIXES)  # table keys that are not customers
PARTITION_PREFIX = PARTITION_KEY_PREFIX.encode()  # a partition's own keys: frontier, source positions
WALK_SLICE = 0.002  # seconds of close walk at a time, at most once per LOYALTY_WALK_EVERY (10 ms):
# a walk takes at most a fifth of the agent's time; and a walk is nudged along, in order with
# the inputs, every LOYALTY_WALK_NUDGE_EVERY (50 ms) ...
WALK_NUDGE_SLICE = 0.01  # ... for this long: a receipt behind a nudge waits at most this
#: Failures of the broker or the network while an input is processed: not the input's fault, so
#: never its dead letter. They stop the worker; a restart reads the input again.
NOT_THE_INPUT = (KafkaError, OSError, asyncio.TimeoutError)


@dataclass
class Walk:
    """A close walk over one partition's customers, done a slice at a time between inputs."""

    keys: list[bytes]
    index: int = 0
    closed: int = 0
    started: float = field(default_factory=time.monotonic)


def register_agents(p: Pipeline) -> None:
    app, config, metrics = p.app, p.config, p.metrics
    out_topics: dict[OutputKind, TopicT] = {
        OutputKind.STATUS_CHANGE: p.status_changes,
        OutputKind.OFFER_TRIGGER: p.offer_triggers,
        OutputKind.RECEIPT_MESSAGE: p.receipt_messages,
        OutputKind.CUSTOMER_STATUS: p.customer_status,
    }
    inputs_name = p.inputs.get_topic_name()
    out_names = {kind: topic.get_topic_name() for kind, topic in out_topics.items()}
    dead_letters_name = p.dead_letters.get_topic_name()
    changelog_name = p.customers.changelog_topic.get_topic_name()

    def failed(exc: BaseException) -> None:
        # A send that failed must not be followed by an offset commit: flush() waits for
        # delivery but does not raise on a failed batch, so the worker stops here and a
        # restart re-reads everything after the last commit.
        logger.critical("a send failed; stopping so nothing is committed past it: %r", exc)
        app._crash(exc)

    # Straight to the producer's batches (streams/sending.py): Topic.send's buffering and
    # callbacks, and the producer's own per-record send, cost more than the rest of a
    # receipt's processing. Every batch is handed over and delivered before an offset
    # commit (the flush hooks below), so nothing is acknowledged unsent.
    outbox = Outbox(
        lambda: cast(Producer, app.producer)._ensure_producer(),
        failed,
        max_record_bytes=app.conf.producer_max_request_size,
    )

    async def to_producer(topic: str, key: bytes | None, value: bytes | None, partition: int | None) -> Any:
        if partition is None and not outbox.knows(topic):
            await outbox.prepare([topic])
        return outbox.add(topic, key, value, partition)

    async def write_changelog(topic: str, key: bytes, value: bytes | None, partition: int) -> None:
        await to_producer(topic, key, value, partition)

    gate = ChangelogGate(write_changelog)
    # Before Faust commits offsets, in this order: the inputs' batches to the outbox (below),
    # the dirty states to the gate, the gate's held records to the outbox, the outbox to the
    # producer, whose flush then waits for all of it.
    cast(Producer, app.producer).before_flush.extend([gate.drained, outbox.ship])

    async def send(topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        """An event: the changelog records of this input and later ones wait until it is delivered."""
        gate.sent(await to_producer(topic, key, value, partition))

    def write(key: bytes, value: bytes | None, partition: int) -> None:
        """A changelog record, sent once the events before it are delivered (streams/ordering.py)."""
        gate.write(changelog_name, key, value, partition)

    # Customer-status snapshots are state, not events: each customer's latest goes out at the
    # next flush (before its state's changelog record), however many receipts changed it since.
    # A snapshot that erases (an exclusion) goes at once, superseding any still waiting.
    snapshots: dict[str | None, Output] = {}
    customer_status_name = out_names[OutputKind.CUSTOMER_STATUS]

    async def publish(outputs: Iterable[Output], received_at: float | None = None) -> None:
        for output in outputs:
            if output.kind is OutputKind.CUSTOMER_STATUS:
                # The customer's latest replaces any waiting (a snapshot is made when read: those
                # replaced never are). An erasing one goes at once.
                snapshots.pop(output.key, None)
                if not output.erases:
                    snapshots[output.key] = output
                    continue
            await send(
                out_names[output.kind],
                output.key.encode() if output.key is not None else None,
                orjson.dumps(output.value),
            )
            metrics.child(metrics.events, output.kind.value).inc()
            value = output.value
            if output.kind is OutputKind.STATUS_CHANGE:
                changes = metrics.child(
                    metrics.status_changes, value["status_system"], value["direction"], value["current"]
                )
                changes.inc()
            elif output.kind is OutputKind.OFFER_TRIGGER:
                metrics.child(metrics.offers, value["offer_id"]).inc()
            elif output.kind is OutputKind.RECEIPT_MESSAGE and received_at:
                metrics.end_to_end.observe(max(time.time() - received_at, 0.0))

    # A partition's frontier and source positions go after the states in every flush (streams/live.py).
    live = LiveStates(p.customers.data, write, last=lambda key: key.startswith(PARTITION_PREFIX))

    async def flush_states() -> None:
        """Before every offset commit (Faust flushes the producer first): each changed customer's
        latest snapshot is sent, then the dirty states go to the changelog, one record per key,
        held until the events before them (the snapshots included) are delivered."""
        if not outbox.knows(customer_status_name):
            await outbox.prepare([customer_status_name])
        # From here to the hold nothing waits, so no other input runs in between: every state
        # written here has its latest snapshot among these, sent before it.
        waiting = list(snapshots.values())
        snapshots.clear()
        for snapshot in waiting:
            key = (snapshot.key or "").encode()
            gate.sent(outbox.add(customer_status_name, key, orjson.dumps(snapshot.value)))
            metrics.child(metrics.events, snapshot.kind.value).inc()
        written = live.flush()
        gate.hold()
        metrics.changelog_writes.inc(written)

    cast(Producer, app.producer).before_flush.insert(0, flush_states)

    def save(key: bytes, state: CustomerState | CardState | CloseFrontier, partition: int) -> None:
        """Stores a state locally; it reaches the table and the changelog at the next flush (streams/live.py).

        Faust's own `table[key] = value` sends each changelog record through its
        producer buffer one by one; on Tansu, which answers a fetch with one batch per
        partition, that made a restart recover about 100 records a second. Written by
        the flush, the records share batches, and recovery (which reads the changelog
        exactly as Faust wrote it) is batch-sized again.
        """
        live.put(key, state, partition)

    def customer(key: bytes) -> CustomerState | None:
        return live.get(key, CustomerState.from_bytes)

    async def send_inputs(partition: int, batch: bytes) -> None:
        await send(inputs_name, None, batch, partition)

    def batch_failed(exc: BaseException) -> None:
        logger.critical("a batch of inputs could not be sent; stopping so nothing is committed past it: %r", exc)
        app._crash(exc)

    batches = InputBatches(send_inputs, batch_failed)
    cast(Producer, app.producer).before_flush.insert(0, batches.ship)  # first of all

    async def route(kind: str, body: str, source: Source, key: str, *, forwarded: bool = False) -> None:
        """Hands an input to whichever worker owns `key` (a customer id or a card key), via loyalty-inputs.

        `forwarded`: the loyalty agent hands on an input it took, which keeps its source."""
        await batches.add(partition_for(key, p.partitions), Envelope(kind, body, source, forwarded))

    async def refuse(raw: bytes | str | None, key: bytes | None, source: Source, error: str) -> None:
        logger.warning("dead letter from %s[%d]@%d: %s", source.topic, source.partition, source.offset, error)
        metrics.dead_letters.labels(source.topic).inc()
        await send(dead_letters_name, key, dead_letter(raw, key, source.topic, source.partition, source.offset, error))

    async def guarded(work: Awaitable[None], raw: bytes | str | None, key: bytes | None, source: Source) -> None:
        """One input's processing. Whatever it raises but a failure of the broker (a bug
        included) dead-letters the input with the exception's type and message, and the
        agent goes on to the next: no input can stop the worker, or stop it again after a restart."""
        try:
            await work
        except NOT_THE_INPUT:
            raise
        except Exception as exc:
            logger.error("%s[%d]@%d: processing failed", source.topic, source.partition, source.offset, exc_info=exc)
            metrics.input_failures.labels(source.topic).inc()
            await refuse(raw, key, source, f"{type(exc).__name__}: {exc}")

    def source_of(event: EventT[bytes]) -> Source:
        message = event.message
        return Source(message.topic, message.partition, message.offset, message.timestamp or 0.0)

    # Every agent takes its partitions' records in order, none left out (streams/continuity.py).
    continuity = Continuity()

    async def in_order(stream: StreamT[bytes]) -> AsyncIterator[EventT[bytes]]:
        """The agent's records, each acknowledged once the agent is done with it; one past the
        next expected offset of its partition is not taken and the partition is sought back."""
        async for event in cast(Any, stream).noack().events():
            message = event.message
            where = (message.topic, message.partition)
            verdict = continuity.check(where, message.offset)
            if verdict is Verdict.REWIND:
                await rewind(message, where)
                continue
            if verdict is Verdict.GAP:
                first, last = continuity.last_gap
                logger.info("%s[%d]: offsets %d to %d hold no records", message.topic, message.partition, first, last)
                await cast(Consumer, app.consumer).confirm_gap(message.tp, first, last)
            try:
                yield event
            finally:
                event.ack()

    async def rewind(message: Any, where: tuple[str, int]) -> None:
        expected = continuity.expected(where)
        app.consumer.unacked.discard(message)  # not taken, so not waited for at a rebalance either
        metrics.rewinds.labels(message.topic).inc()
        if continuity.refused(where) == 1:
            logger.warning(
                "%s[%d]: record %d came when %d was expected; not taken, the partition is read again from %d",
                message.topic,
                message.partition,
                message.offset,
                expected,
                expected,
            )
        if not continuity.should_seek(where):
            return
        try:
            await app.consumer.seek(message.tp, expected)
        except Exception as exc:  # revoked meanwhile: the rebalance seeks to the committed offset itself
            logger.warning("%s[%d]: could not seek back to %d: %r", message.topic, message.partition, expected, exc)

    held: set[TP] = set()

    @app.on_partitions_assigned.connect
    async def forget_continuity(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned: set[TP] = args[0]
        continuity.keep_only({(tp.topic, tp.partition) for tp in held & assigned})
        held.clear()
        held.update(assigned)

    @app.task
    async def declare_outputs() -> None:
        # Consumers (sinks, tills, the demo) may subscribe before the first event is sent.
        for topic in (*out_topics.values(), p.dead_letters):
            await topic.maybe_declare()
        await outbox.prepare([*out_names.values(), dead_letters_name])

    campaigns_ran: dict[int, str] = {}  # loyalty-inputs partition -> the local date last run here

    # --- the close frontier: periods over for everyone on a partition (models/frontier.py) ----------
    frontiers: dict[int, tuple[CloseFrontier | None, float]] = {}  # the decoded frontier, its threshold
    frontier_keys = [partition_key(n).encode() for n in range(p.partitions)]
    walks: dict[int, Walk] = {}
    last_input: dict[int, float] = {}  # partition -> monotonic time its last input was processed
    last_idle_tick: dict[int, float] = {}
    walked_at = 0.0  # when the last walk slice ran (perf_counter)
    walk_every = p.settings.loyalty_walk_every
    started_at = time.monotonic()

    def frontier_of(partition: int) -> tuple[CloseFrontier | None, float]:
        """The partition's frontier as the table holds it (restored after a restart or a rebalance)."""
        frontier = live.get(frontier_keys[partition], CloseFrontier.from_bytes)
        cached = frontiers.get(partition)
        if cached is not None and cached[0] is frontier:
            return cached
        threshold = next_threshold(frontier, config) if frontier is not None else float("-inf")
        frontiers[partition] = (frontier, threshold)
        if frontier is not None and not frontier.walked and partition not in walks:
            start_walk(partition)  # one a crash or a rebalance interrupted
        return frontier, threshold

    def start_walk(partition: int) -> None:
        walks[partition] = Walk([k for k in live.all_keys() if not k.startswith(RESERVED)])
        metrics.close_walk.labels(str(partition)).set(len(walks[partition].keys))

    def save_frontier(partition: int, frontier: CloseFrontier) -> None:
        save(frontier_keys[partition], frontier, partition)
        frontiers[partition] = (frontier, next_threshold(frontier, config))

    async def observe(partition: int, instant: datetime, cause: str) -> None:
        """An input's time on its partition; past the next threshold it moves the frontier and starts a walk."""
        frontier, threshold = frontier_of(partition)
        if instant.timestamp() < threshold:
            return
        moved = advanced(frontier, instant, cause, config)
        if moved is None:
            return
        if partition in walks:
            # The walk to the frontier before ends first, at once: a customer it had not
            # reached would otherwise get both closes as one change, caused by this input,
            # where the reference, a what-if and a replay close them one at a time.
            await walk_some(float("inf"), only=partition)
        save_frontier(partition, moved)
        logger.info("partition %d: periods before %s close for everyone", partition, moved.periods)
        if not moved.walked:
            start_walk(partition)

    async def current(key: bytes, partition: int) -> CustomerState | None:
        """What every input for a customer starts from: its state, with every period the
        partition's frontier has left behind closed (those events stored and published first)."""
        state = customer(key)
        frontier, _ = frontier_of(partition)
        if state is not None and frontier is not None:
            await close_if_due(key, state, frontier, partition, by="input")
        return state

    async def close_if_due(key: bytes, state: CustomerState, frontier: CloseFrontier, partition: int, by: str) -> bool:
        if not is_due(state, frontier.periods):
            return False
        outputs = close_due(state, frontier.periods, frontier.cause, config).outputs
        save(key, state, partition)
        await publish(outputs)
        metrics.closed_by_walk.labels(by).inc()
        return True

    async def walk_some(budget: float, only: int | None = None) -> None:
        """Closes due periods of customers nobody's input reached, for `budget` seconds, then hands back."""
        nonlocal walked_at
        deadline = time.perf_counter() + budget
        assigned = app.consumer.assignment()
        for partition, walk in list(walks.items()):
            if only is not None and partition != only:
                continue
            if TP(inputs_name, partition) not in assigned:
                del walks[partition]  # another worker owns it now, and walks it from its frontier
                metrics.close_walk.labels(str(partition)).set(0)
                continue
            frontier, _ = frontier_of(partition)
            assert frontier is not None
            keys = walk.keys
            while walk.index < len(keys) and time.perf_counter() < deadline:
                key = keys[walk.index]
                walk.index += 1
                if partition_for(key.decode(), p.partitions) != partition:
                    continue
                state = customer(key)  # None: deleted since the walk began
                if state is not None and await close_if_due(key, state, frontier, partition, by="walk"):
                    walk.closed += 1
            walked_at = time.perf_counter()
            metrics.close_walk.labels(str(partition)).set(len(keys) - walk.index)
            if walk.index < len(keys):
                return
            del walks[partition]
            save_frontier(partition, CloseFrontier(frontier.periods, frontier.cause, walked=True))
            logger.info(
                "partition %d: close walk to %s done, %d customers closed, %.1fs",
                partition,
                frontier.periods,
                walk.closed,
                time.monotonic() - walk.started,
            )

    async def send_tick(partition: int, at: datetime | None) -> None:
        body = json.dumps({"at": at.isoformat() if at is not None else None})
        source = Source("clock", partition, 0, p.clock.now().timestamp())
        await batches.add(partition, Envelope(TICK, body, source))

    @app.timer(interval=1.0)
    async def idle_ticks() -> None:
        """An idle partition gets the wall-clock time, in order with its inputs, once per `idle_close_after`."""
        now, idle_after = time.monotonic(), config.idle_close_after.total_seconds()
        for tp in app.consumer.assignment():
            if tp.topic != inputs_name:
                continue
            quiet_since = max(last_input.get(tp.partition, started_at), last_idle_tick.get(tp.partition, 0.0))
            if now - quiet_since >= idle_after:
                last_idle_tick[tp.partition] = now
                await send_tick(tp.partition, p.clock.now())

    nudged: set[int] = set()  # partitions with a nudge on its way: never more than one queued

    @app.timer(interval=p.settings.loyalty_walk_nudge_every)
    async def walk_nudges() -> None:
        """A walk also advances between inputs: at most a fifth of the time more, a slice at a time.

        A nudge waits its turn behind the inputs already queued, so under a backlog the
        inputs go first, and at most one nudge per partition is ever in the queue.
        """
        for partition in list(walks):
            if partition not in nudged:
                nudged.add(partition)
                await send_tick(partition, None)

    @app.timer(interval=10.0)
    async def daily_campaigns() -> None:
        """Once a local day, each partition this worker owns runs the date-triggered campaigns.

        A worker that starts (or takes a partition over) runs today's at once: a date run
        twice grants nothing twice, and a day slept through by every worker is not skipped.
        """
        today = p.clock.now().astimezone(config.timezone).date().isoformat()
        for tp in app.consumer.assignment():
            if tp.topic != inputs_name or campaigns_ran.get(tp.partition) == today:
                continue
            command = {"command_id": f"daily-{today}", "type": "run_campaigns", "date": today}
            source = Source("daily-campaigns", tp.partition, 0, p.clock.now().timestamp())
            await batches.add(tp.partition, Envelope(RUN_CAMPAIGNS, json.dumps(command), source))
            campaigns_ran[tp.partition] = today

    @app.timer(interval=5.0)
    async def measure_lag() -> None:
        assigned = app.consumer.assignment()
        positions = continuity.positions()
        for (topic, partition), position in list(positions.items()):
            tp = TP(topic, partition)
            if tp not in assigned:  # revoked by a rebalance: another worker reports it now
                del positions[(topic, partition)]
                with contextlib.suppress(KeyError):  # never measured
                    metrics.consumer_lag.remove(topic, str(partition))
                continue
            highwater = app.consumer.highwater(tp)
            if highwater is not None:
                metrics.consumer_lag.labels(topic, str(partition)).set(max(highwater - position, 0))

    @app.agent(p.receipts, name="ingest-receipts")
    async def ingest_receipts(stream: StreamT[bytes]) -> None:
        async for event in in_order(stream):
            source = source_of(event)
            await guarded(ingest_receipt(event.value, event.key, source), event.value, event.key, source)

    async def ingest_receipt(raw: bytes, key: bytes | None, source: Source) -> None:
        try:
            receipt = parse_receipt(raw, config, p.clock.now())
        except InvalidInput as exc:
            metrics.receipts.labels("unknown", "dead_letter").inc()
            await refuse(raw, key, source, str(exc))
            return
        if receipt.customer_id is None and receipt.card_number is not None:
            # The card's record decides whose it is: on the card's partition.
            await route(CARD_RECEIPT, raw.decode(), source, card_key(receipt.card_number))
            return
        if receipt.customer_id is None:
            metrics.child(metrics.receipts, receipt.type, "anonymous").inc()
            await publish(apply_receipt(None, receipt, config).outputs, source.timestamp)
            return
        await route(RECEIPT, raw.decode(), source, receipt.customer_id)

    @app.agent(p.status_commands, name="ingest-commands")
    async def ingest_commands(stream: StreamT[bytes]) -> None:
        async for event in in_order(stream):
            source = source_of(event)
            await guarded(ingest_command(event.value, event.key, source), event.value, event.key, source)

    async def ingest_command(raw: bytes, key: bytes | None, source: Source) -> None:
        try:
            command = parse_command(raw, config, _instant(source.timestamp))
        except InvalidInput as exc:
            metrics.commands.labels("unknown", "dead_letter").inc()
            await refuse(raw, key, source, str(exc))
            return
        if isinstance(command, SetStatus):
            await route(SET_STATUS, raw.decode(), source, command.customer_id)
            return
        # A period closes (a campaign runs) for every customer: each partition does its own.
        kind = RUN_CAMPAIGNS if isinstance(command, RunCampaigns) else CLOSE_PERIOD
        envelope = Envelope(kind, raw.decode(), source)
        for partition in range(p.partitions):
            await batches.add(partition, envelope)

    @app.agent(p.customer_events, name="ingest-customer-events")
    async def ingest_customer_events(stream: StreamT[bytes]) -> None:
        async for event in in_order(stream):
            source = source_of(event)
            await guarded(ingest_customer_event(event.value, event.key, source), event.value, event.key, source)

    async def ingest_customer_event(raw: bytes, key: bytes | None, source: Source) -> None:
        try:
            customer_event = parse_customer_event(raw, config, p.clock.now())
        except InvalidInput as exc:
            metrics.customer_events.labels("unknown", "dead_letter").inc()
            await refuse(raw, key, source, str(exc))
            return
        if customer_event.type in CARD_EVENTS:
            assert customer_event.card_number is not None
            await route(CARD_EVENT, raw.decode(), source, card_key(customer_event.card_number))
            return
        await route(CUSTOMER_EVENT, raw.decode(), source, customer_event.customer_id)

    # Inputs an ingest agent routed, by source, so copies of them are dropped (streams/positions.py).
    routed_from = {topic.get_topic_name() for topic in (p.receipts, p.customer_events, p.status_commands)}
    position_keys = [positions_key(n) for n in range(p.partitions)]

    def positions_of(partition: int) -> SourcePositions:
        return live.get(position_keys[partition], SourcePositions.from_bytes) or SourcePositions()

    @app.agent(p.inputs, name="loyalty")
    async def loyalty(stream: StreamT[bytes]) -> None:
        async for event in in_order(stream):
            source_of(event)
            partition = event.message.partition
            for envelope in decode_inputs(event.value):
                source = envelope.source
                routed = not envelope.forwarded and source.topic in routed_from
                if routed and positions_of(partition).taken(source):
                    metrics.input_copies.inc()
                    continue
                started = time.perf_counter()
                await guarded(take(envelope, partition), envelope.raw, None, source)
                metrics.processing.observe(time.perf_counter() - started)
                if routed:
                    # After the input, never before: a flush while it awaited must not store a
                    # position ahead of its state. Read again: a rebalance may have restored it.
                    positions = positions_of(partition)
                    positions.take(source)
                    live.put(position_keys[partition], positions, partition)
                if walks and time.perf_counter() - walked_at >= walk_every:
                    await walk_some(WALK_SLICE)
                gate.hold()

    async def take(envelope: Envelope, partition: int) -> None:
        """One input, whatever its kind, on the loyalty-inputs partition that owns its key."""
        kind = envelope.kind
        if kind != TICK:
            last_input[partition] = time.monotonic()
        if kind == RECEIPT:
            await count_receipt(envelope, partition)
        elif kind == SET_STATUS:
            await apply_set_status(envelope, partition)
        elif kind == CUSTOMER_EVENT:
            await apply_event(envelope, partition)
        elif kind == CARD_RECEIPT:
            await route_card_receipt(envelope)
        elif kind == CARD_EVENT:
            await apply_card(envelope, partition)
        elif kind == MERGE_AWAY:
            await hand_over(envelope, partition)
        elif kind == MERGE_IN:
            await take_over(envelope, partition)
        elif kind == CARD_RELEASE:
            await release_card(envelope, partition)
        elif kind == RUN_CAMPAIGNS:
            await campaigns_of_partition(partition, envelope)
        elif kind == CLOSE_PERIOD:
            await close_partition(partition, envelope)
        elif kind == TICK:
            await tick(partition, envelope)

    async def tick(partition: int, envelope: Envelope) -> None:
        at = json.loads(envelope.raw)["at"]
        if at is not None:
            await observe(partition, datetime.fromisoformat(at), clock_cause(at))
        else:
            nudged.discard(partition)
            if walks:
                await walk_some(WALK_NUDGE_SLICE)

    async def count_receipt(envelope: Envelope, partition: int) -> None:
        try:
            receipt = validated_receipt(envelope.raw)
            assert receipt.customer_id is not None
            key = receipt.customer_id.encode()
            await observe(partition, receipt.issued_at, receipt.receipt_id)
            state = await current(key, partition)
            if state is not None and state.merged_into is not None:
                await forward_receipt(envelope, state.merged_into)  # a temporary owner merged into a member
                return
            result: Result = apply_receipt(state, receipt, config)
        except InvalidInput as exc:
            metrics.receipts.labels("unknown", "dead_letter").inc()
            await refuse(envelope.raw, None, envelope.source, str(exc))
            return
        outcome = (
            "duplicate"
            if result.duplicate
            else "history"
            if result.history_only
            else "late"
            if result.late
            else "counted"
        )
        metrics.child(metrics.receipts, receipt.type, outcome).inc()
        if not result.duplicate and result.state is not None:
            save(key, result.state, partition)
        await publish(result.outputs, envelope.source.timestamp)

    async def apply_set_status(envelope: Envelope, partition: int) -> None:
        command = parse_command(envelope.raw, config, _instant(envelope.source.timestamp))
        assert isinstance(command, SetStatus)
        key = command.customer_id.encode()
        try:
            result = set_status(await current(key, partition), command, config)
        except InvalidInput as exc:  # an excluded or merged-away customer
            metrics.commands.labels("set_status", "dead_letter").inc()
            await refuse(envelope.raw, None, envelope.source, str(exc))
            return
        metrics.commands.labels("set_status", "duplicate" if result.duplicate else "applied").inc()
        if not result.duplicate and result.state is not None:
            save(key, result.state, partition)
        await publish(result.outputs)

    async def apply_event(envelope: Envelope, partition: int) -> None:
        kind = "unknown"
        try:
            customer_event = parse_customer_event(envelope.raw, config, p.clock.now())
            key, kind = customer_event.customer_id.encode(), customer_event.type
            result = apply_customer_event(await current(key, partition), customer_event, config)
        except InvalidInput as exc:  # a transition the lifecycle does not allow
            metrics.customer_events.labels(kind, "dead_letter").inc()
            await refuse(envelope.raw, None, envelope.source, str(exc))
            return
        metrics.customer_events.labels(kind, "duplicate" if result.duplicate else "applied").inc()
        if not result.duplicate and result.state is not None:
            save(key, result.state, partition)
        await publish(result.outputs)
        for number in result.released_cards:  # exclusion: the card records forget the customer too
            body = json.dumps({"card": number, "owner": key.decode()})
            await route(CARD_RELEASE, body, envelope.source, card_key(number), forwarded=True)

    async def forward_receipt(envelope: Envelope, customer_id: str) -> None:
        value = json.loads(envelope.raw)
        value["customer_id"] = customer_id
        await route(RECEIPT, json.dumps(value), envelope.source, customer_id, forwarded=True)

    def card_of(number: str) -> CardState | None:
        return live.get(card_key(number).encode(), CardState.from_bytes)

    async def route_card_receipt(envelope: Envelope) -> None:
        receipt = validated_receipt(envelope.raw)
        assert receipt.card_number is not None
        owner = owner_of(card_of(receipt.card_number))
        if owner is None:  # an unknown or blocked card: an anonymous purchase
            metrics.receipts.labels(receipt.type, "anonymous").inc()
            await publish(apply_receipt(None, receipt, config).outputs, envelope.source.timestamp)
            return
        await forward_receipt(envelope, owner)

    async def apply_card(envelope: Envelope, partition: int) -> None:
        customer_event = parse_customer_event(envelope.raw, config, p.clock.now())
        assert customer_event.card_number is not None
        try:
            result = apply_card_event(card_of(customer_event.card_number), customer_event)
        except InvalidInput as exc:  # an unknown, blocked or already owned card
            metrics.customer_events.labels(customer_event.type, "dead_letter").inc()
            await refuse(envelope.raw, None, envelope.source, str(exc))
            return
        metrics.customer_events.labels(customer_event.type, "duplicate" if result.duplicate else "applied").inc()
        if result.duplicate or result.card is None:
            return
        save(card_key(customer_event.card_number).encode(), result.card, partition)
        for step in result.routes:
            if step.kind == "customer_event":
                await route(CUSTOMER_EVENT, envelope.raw, envelope.source, step.customer_id, forwarded=True)
            else:
                body = {"event": envelope.raw, "from": step.customer_id, "into": step.into}
                await route(MERGE_AWAY, json.dumps(body), envelope.source, step.customer_id, forwarded=True)

    async def hand_over(envelope: Envelope, partition: int) -> None:
        body = json.loads(envelope.raw)
        customer_event = parse_customer_event(body["event"], config, p.clock.now())
        key = body["from"].encode()
        result, donor = merge_away(
            await current(key, partition),
            body["from"],
            body["into"],
            customer_event.event_id,
            customer_event.occurred_at,
            config,
        )
        if result.duplicate or result.state is None:
            return
        save(key, result.state, partition)
        await publish(result.outputs)
        taken = {"event": body["event"], "donor": donor.decode(), "into": body["into"]}
        await route(MERGE_IN, json.dumps(taken), envelope.source, body["into"], forwarded=True)

    async def take_over(envelope: Envelope, partition: int) -> None:
        body = json.loads(envelope.raw)
        customer_event = parse_customer_event(body["event"], config, p.clock.now())
        key = body["into"].encode()
        donor = CustomerState.from_bytes(body["donor"].encode())
        result = merge_into(
            await current(key, partition),
            donor,
            body["into"],
            customer_event.event_id,
            customer_event.occurred_at,
            config,
        )
        if not result.duplicate and result.state is not None:
            save(key, result.state, partition)
        await publish(result.outputs)

    async def release_card(envelope: Envelope, partition: int) -> None:
        body = json.loads(envelope.raw)
        key = card_key(body["card"]).encode()
        if release(card_of(body["card"]), body["owner"]):
            live.delete(key, partition)  # a tombstone: recovery deletes it too

    async def campaigns_of_partition(partition: int, envelope: Envelope) -> None:
        command = parse_command(envelope.raw, config, _instant(envelope.source.timestamp))
        assert isinstance(command, RunCampaigns)
        started, granted = time.perf_counter(), 0
        for index, key in enumerate(live.all_keys()):
            if index % 1000 == 999:
                await asyncio.sleep(0)  # let the web server, timers and sinks run meanwhile
            if key.startswith(RESERVED) or partition_for(key.decode(), p.partitions) != partition:
                continue
            stored = live.peek(key)
            if not isinstance(stored, CustomerState | bytes) or not worth_a_look(stored, config):
                continue
            state = await current(key, partition)
            if state is None:
                continue
            outputs = daily_run(state, command.day, config)
            if outputs:
                save(key, state, partition)
                await publish(outputs)
                granted += len(outputs)
        metrics.commands.labels("run_campaigns", "applied").inc()
        logger.info(
            "campaigns of %s on partition %d: %d grants in %.2fs",
            command.day,
            partition,
            granted,
            time.perf_counter() - started,
        )

    async def close_partition(partition: int, envelope: Envelope) -> None:
        command = parse_command(envelope.raw, config, _instant(envelope.source.timestamp))
        assert isinstance(command, ClosePeriod)
        closed = 0
        for key in live.all_keys():
            if key.startswith(RESERVED) or partition_for(key.decode(), p.partitions) != partition:
                continue
            # Periods the frontier has left behind close by the frontier first, so a close's
            # contents never depend on how far the walk had got when the command came.
            before = await current(key, partition)
            if before is None:  # deleted since the list was made
                continue
            result = close_period(before, command, config)
            assert result.state is not None
            if result.outputs:  # the period advanced: the state changed
                save(key, result.state, partition)
                closed += 1
            await publish(result.outputs)
        metrics.commands.labels("close_period", "applied").inc()
        logger.info(
            "closed %s %s for %d customers of partition %d", command.status_system, command.period, closed, partition
        )


def _instant(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
