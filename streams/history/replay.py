"""`loyalty replay`: the live state rebuilt under a configuration, in a namespace of its own.

A namespace is an app id: its consumer group, its `{app id}-inputs` topic, its
customers table (`{app id}-...customers-changelog`) and its sinks' consumer groups.
The replay never touches the namespace in use; it builds a new one and leaves
the switch to the operator:

1. Stop the workers. Receipts wait in Kafka meanwhile (tills print without loyalty lines).
2. `loyalty replay --config NEW.yaml --from DATE --app-id NEW`:
   - reads the input history (receipts from DATE, customer events and commands in full)
     and runs it through the core under NEW.yaml, split by customer across `--workers`
     processes (streams/history/shards.py); the events this makes are history and
     are not published again (an offer granted under the old rules is not granted twice);
   - writes the rebuilt customers, cards and close frontiers to the new namespace's
     changelog, and commits the new consumer group's offsets on the input topics at
     exactly where the history it read ends, so the new workers count every later
     input once and no earlier one again;
   - compares each customer's level with the latest `customer-status` snapshot of the
     old namespace and publishes a status change with `reason: recalculation` for each
     one that differs, and a new snapshot (its version above the old one's, so the sinks
     take it) for every customer rebuilt; the new sinks' groups start after what the
     old sinks had, so nothing is written twice.
3. Start the workers with `LOYALTY_APP_ID=NEW LOYALTY_CONFIG=NEW.yaml`.

Stopping first makes the switch exact: nothing is counted by both namespaces, and no
snapshot version is used twice.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from config.settings import Settings
from models import events
from models.cards import card_key
from models.engine import recalculated
from models.frontier import partition_key
from models.history import Replayer, Source
from models.schema import LoyaltyConfig
from streams.app import changelog_topic, inputs_topic
from streams.envelope import partition_for
from streams.history.reading import log_ends, read_history, reading
from streams.history.shards import MIN_SPLIT, rebuild_state

RECALCULATION = "recalculation"


class NamespaceInUse(Exception):
    """The target app id already has state or offsets: a replay builds only new namespaces."""


@dataclass
class ReplaySummary:
    app_id: str
    inputs: int = 0
    refused: int = 0
    customers: int = 0
    recalculated: int = 0  # status changes published with reason `recalculation`
    snapshots: int = 0
    not_rebuilt: int = 0  # customers the old namespace knows that no input since --from names
    workers: int = 1  # processes the replay ran in
    rounds: int = 1  # how often the shards ran (more than once only when a receipt's guess mattered)
    read_seconds: float = 0.0
    replay_seconds: float = 0.0
    write_seconds: float = 0.0
    by_change: dict[str, int] = field(default_factory=dict)  # "system previous→current" -> customers


async def replay(
    settings: Settings,
    config: LoyaltyConfig,
    input_topics: Mapping[Source, str],
    since: datetime | None,
    app_id: str,
    workers: int = 1,
    min_split: int = MIN_SPLIT,
) -> ReplaySummary:
    """The rebuild (module docstring); `workers` processes split the replay by customer
    (streams/history/shards.py) if there are `min_split` inputs or more."""
    if app_id == settings.loyalty_app_id:
        raise NamespaceInUse(f"--app-id {app_id} is the namespace in use (LOYALTY_APP_ID); name a new one")
    bootstrap, prefix, partitions = settings.kafka_bootstrap, settings.loyalty_topic_prefix, settings.loyalty_partitions
    changelog = changelog_topic(app_id, prefix)
    await _refuse_used(bootstrap, changelog, app_id)
    summary = ReplaySummary(app_id)

    started = time.monotonic()
    history = await read_history(
        bootstrap, input_topics, since=since, fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms
    )
    status_topic = prefix + config.topics.customer_status
    live = await latest_snapshots(bootstrap, status_topic)  # read first: the replay's processes inherit it
    summary.read_seconds = time.monotonic() - started

    started = time.monotonic()
    # What the replay makes was published when it happened, under the old rules: only the states are kept.
    # Receipts issued before `since` are left out (streams/history.within): a split finds them in
    # its survey, which decodes every receipt anyway, so the check costs no second pass.
    # Each process announces and encodes its own customers (`settled`), which the write sends as they are.
    rebuilt = rebuild_state(
        config,
        history.records,
        lambda key: partition_for(key, partitions),
        partitions,
        workers,
        min_split=min_split,
        since=since,
        settle=functools.partial(settled, live=live, config=config, app_id=app_id, now=datetime.now(UTC)),
    )
    replayer, shares = rebuilt.replayer, rebuilt.settled
    summary.inputs, summary.refused = replayer.inputs, replayer.refused
    summary.workers, summary.rounds = rebuilt.workers, rebuilt.rounds
    rebuilt_ids: set[str] = set()
    for share in shares:
        rebuilt_ids.update(customer_id for customer_id, _ in share.states)
        summary.snapshots += len(share.states)  # one for every customer rebuilt
        for change, count in share.by_change.items():
            summary.by_change[change] = summary.by_change.get(change, 0) + count
    summary.recalculated = sum(summary.by_change.values())
    summary.customers = len(rebuilt_ids)
    summary.not_rebuilt = len(live.keys() - rebuilt_ids)
    summary.replay_seconds = time.monotonic() - started

    started = time.monotonic()
    names = config.topics
    output_topics = [prefix + n for n in (names.status_changes, names.offer_triggers, names.receipt_messages)]
    output_topics.append(status_topic)  # every topic the sinks read
    await _write_namespace(settings, replayer, shares, app_id)
    await _commit(bootstrap, app_id, history.ends)
    # The new sinks start where the old ones are: at the end of the output topics as they are now.
    for sink in ("redis", "postgres"):
        await _commit(bootstrap, f"{app_id}-sink-{sink}", await _ends_of(bootstrap, output_topics))
    await _publish(bootstrap, prefix, config, [output for share in shares for output in share.outputs])
    summary.write_seconds = time.monotonic() - started
    return summary


@dataclass
class Settled:
    """A replay process's customers, ready to write (`settled`)."""

    states: list[tuple[str, bytes]]  # customer id, the state as the changelog stores it
    outputs: list[tuple[str, str | None, bytes]]  # output kind, key, value: as the workers send them
    by_change: dict[str, int] = field(default_factory=dict)  # "system previous→current" -> customers


def settled(
    replayer: Replayer, *, live: Mapping[str, dict[str, Any]], config: LoyaltyConfig, app_id: str, now: datetime
) -> Settled:
    """Each rebuilt customer's recalculation (models/engine.recalculated) against the old
    namespace's latest snapshot, and its state as it is then, encoded where it was rebuilt: in
    the replay's own processes, rather than all of them in the one that writes."""
    cause = f"{RECALCULATION}:{app_id}"
    share = Settled([], [])
    for customer_id, state in replayer.states.items():
        before = live.get(customer_id, {})
        old_levels = {s["status_system"]: s["status"] for s in before.get("statuses", ())}
        for output in recalculated(state, before.get("version", 0), old_levels, cause, now, config).outputs:
            value = output.value
            if output.kind is events.OutputKind.STATUS_CHANGE:
                change = f"{value['status_system']} {value['previous']}→{value['current']}"
                share.by_change[change] = share.by_change.get(change, 0) + 1
            share.outputs.append((output.kind.value, output.key, orjson.dumps(value)))
        share.states.append((customer_id, state.to_bytes()))
    return share


async def latest_snapshots(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """The newest `customer-status` snapshot of each customer, as the sinks hold it."""
    latest: dict[str, dict[str, Any]] = {}
    history = await read_history(bootstrap, {Source.RECEIPTS: topic})
    for record in history.records:
        snapshot = json.loads(record.value)
        current = latest.get(snapshot["customer_id"])
        if current is None or snapshot["version"] > current["version"]:
            latest[snapshot["customer_id"]] = snapshot
    return latest


async def _refuse_used(bootstrap: str, changelog: str, app_id: str) -> None:
    ends = await _ends_of(bootstrap, [changelog])
    if any(ends.values()):
        raise NamespaceInUse(f"namespace {app_id} already has a customers table ({changelog}); name a new one")


async def _ends_of(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    async with reading(bootstrap, fetch_max_wait_ms=10) as consumer:
        partitions = [
            TopicPartition(topic, n) for topic in topics for n in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        return await log_ends(consumer, bootstrap, partitions)


async def _write_namespace(settings: Settings, replayer: Replayer, shares: list[Settled], app_id: str) -> None:
    """The rebuilt table, as the workers' changelog records it: customers, cards, frontiers."""
    partitions, changelog = replayer.partitions, changelog_topic(app_id, settings.loyalty_topic_prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(changelog, partitions, 1, topic_configs={"cleanup.policy": "compact"}),
                NewTopic(settings.loyalty_topic_prefix + inputs_topic(app_id), partitions, 1),
            ]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        for share in shares:
            for customer_id, raw in share.states:
                where = partition_for(customer_id, partitions)
                await producer.send(changelog, raw, customer_id.encode(), partition=where)
        for number, card in replayer.cards.items():
            where = partition_for(card_key(number), partitions)
            await producer.send(changelog, card.to_bytes(), card_key(number).encode(), partition=where)
        for partition, frontier in replayer.frontiers.items():
            await producer.send(changelog, frontier.to_bytes(), partition_key(partition).encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def _commit(bootstrap: str, group: str, offsets: Mapping[TopicPartition, int]) -> None:
    if not offsets:
        return
    async with reading(bootstrap, group_id=group) as consumer:
        consumer.assign(list(offsets))
        await consumer.commit(dict(offsets))


async def _publish(
    bootstrap: str, prefix: str, config: LoyaltyConfig, outputs: list[tuple[str, str | None, bytes]]
) -> None:
    topics = {
        events.OutputKind.STATUS_CHANGE.value: prefix + config.topics.status_changes,
        events.OutputKind.CUSTOMER_STATUS.value: prefix + config.topics.customer_status,
    }
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    await producer.start()
    try:
        for kind, key, value in outputs:
            await producer.send(topics[kind], value, key.encode() if key is not None else None)
        await producer.flush()
    finally:
        await producer.stop()
