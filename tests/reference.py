"""What the pipeline must have produced for an input, computed by the pure core, and what it did produce."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from config.settings import Settings
from models.engine import apply_receipt, close_due, is_due, recall, recall_ids
from models.errors import InvalidInput
from models.events import Output
from models.frontier import CloseFrontier, advanced
from models.inputs import parse_receipt
from models.schema import LoyaltyConfig
from models.state import CustomerState, ReceiptRecord
from streams.envelope import partition_for
from streams.local.probe import OutputReader

DEFAULT_PARTITIONS = Settings.model_fields["loyalty_partitions"].default

EVENT_TOPICS = ("status-changes", "offer-triggers", "receipt-messages", "customer-status")


@dataclass
class Reference:
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)  # receipt ids the core refuses (dead letters)
    answered: set[str] = field(default_factory=set)  # receipt ids that get a receipt message
    final: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # customer -> statuses
    versions: dict[str, int] = field(default_factory=dict)  # customer -> the version of its final state
    counted: int = 0


def reference(
    config: LoyaltyConfig, receipts: list[dict[str, Any]], now: datetime, partitions: int = DEFAULT_PARTITIONS
) -> Reference:
    """Runs the receipts through the core in the order given, as the pipeline's partitions see them.

    Receipts keyed by customer id keep their order within a partition (Kafka's
    default partitioner is the pipeline's), so each partition's close frontier moves
    at the same receipt here as there. Here a walk closes the partition's customers
    at once; the pipeline spreads it, with the same events (`close_due` does not
    depend on what reached the customer first); a walk still going when the
    frontier moves again is finished first, there as here.
    """
    states: dict[str, CustomerState] = {}
    frontiers: dict[int, CloseFrontier] = {}
    spilled: dict[tuple[str, str], ReceiptRecord] = {}
    ref = Reference()

    def record(outputs: list[Output]) -> None:
        for output in outputs:
            ref.events[output.value["event_id"]] = output.value

    for value in receipts:
        receipt = parse_receipt(json.dumps(value), config, now)
        customer = receipt.customer_id
        if customer is not None:
            partition = partition_for(customer, partitions)
            moved = advanced(frontiers.get(partition), receipt.issued_at, receipt.receipt_id, config)
            if moved is not None:
                frontiers[partition] = moved
                for someone, state in states.items():
                    if partition_for(someone, partitions) == partition and is_due(state, moved.periods):
                        record(close_due(state, moved.periods, moved.cause, config).outputs)
        state = states.get(customer) if customer else None
        if state is not None:  # the receipt store, as the live worker keeps it
            for receipt_id in recall_ids(state, receipt):
                kept = spilled.get((state.customer_id, receipt_id))
                if kept is not None:
                    recall(state, receipt_id, kept, config)
        try:
            result = apply_receipt(state, receipt, config, spill=True)
        except InvalidInput:
            ref.refused.add(receipt.receipt_id)
            continue
        new = customer is not None and customer not in states
        if result.state is not None:
            spilled.update(((result.state.customer_id, i), r) for i, r in result.state.spilled)
            result.state.spilled.clear()
        if customer is not None and result.state is not None:
            states[customer] = result.state
        if not result.duplicate:
            ref.counted += 1
        ref.answered.add(receipt.receipt_id)
        record(result.outputs)
        frontier = frontiers.get(partition_for(customer, partitions)) if customer is not None else None
        if new and frontier is not None and result.state is not None and is_due(result.state, frontier.periods):
            # A customer that starts behind its partition's frontier is closed up to it at once.
            record(close_due(result.state, frontier.periods, frontier.cause, config).outputs)
    snapshots = [event for event in ref.events.values() if is_snapshot(event)]
    ref.versions = latest_versions(snapshots)
    ref.final = {s["customer_id"]: s["statuses"] for s in snapshots if s["version"] == ref.versions[s["customer_id"]]}
    return ref


def is_snapshot(event: dict[str, Any]) -> bool:
    return "statuses" in event


def assert_same(seen: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]) -> None:
    """The pipeline published the core's events, every one and no other, with equal contents.

    Customer-status snapshots are state, not events: the pipeline sends each customer's latest
    at every commit, so of the core's snapshots it publishes a timing-dependent subset. Every
    one it publishes must be the core's for that version, and each customer's latest must be
    the core's latest.
    """
    events = {i: e for i, e in seen.items() if not is_snapshot(e)}
    wanted = {i: e for i, e in expected.items() if not is_snapshot(e)}
    missing, unexpected = wanted.keys() - events.keys(), events.keys() - wanted.keys()
    assert not missing, f"{len(missing)} expected events never published: {describe(wanted, missing)}"
    assert not unexpected, f"{len(unexpected)} events the core would not emit: {describe(events, unexpected)}"
    assert events == wanted
    snapshots = {i: e for i, e in seen.items() if is_snapshot(e)}
    wrong = {i for i, e in snapshots.items() if expected.get(i) != e}
    assert not wrong, f"{len(wrong)} snapshots the core would not make: {describe(snapshots, wrong)}"
    assert latest_versions(snapshots.values()) == latest_versions(e for e in expected.values() if is_snapshot(e))


def latest_versions(snapshots: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Each customer's highest snapshot version."""
    latest: dict[str, int] = {}
    for snapshot in snapshots:
        latest[snapshot["customer_id"]] = max(latest.get(snapshot["customer_id"], 0), snapshot["version"])
    return latest


async def snapshots_settled(
    reader: OutputReader, prefix: str, expected: dict[str, dict[str, Any]], timeout: float = 30.0
) -> None:
    """Waits until every customer's latest snapshot has arrived (they go out at the worker's commits)."""
    wanted = latest_versions(e for e in expected.values() if is_snapshot(e))

    def arrived() -> bool:
        latest = latest_versions(reader.records[prefix + "customer-status"])
        return all(latest.get(customer, 0) >= version for customer, version in wanted.items())

    try:
        await reader.wait_for(arrived, timeout=timeout, what="every customer's latest snapshot")
    except TimeoutError as exc:
        latest = latest_versions(reader.records[prefix + "customer-status"])
        behind = sorted((c, v, latest.get(c, 0)) for c, v in wanted.items() if latest.get(c, 0) < v)
        shown = ", ".join(f"{c}: version {v} expected, {seen} seen" for c, v, seen in behind[:10])
        raise TimeoutError(f"{exc}\n{len(behind)} customers behind: {shown}") from None


def describe(events: dict[str, dict[str, Any]], ids: set[str], most: int = 5) -> list[dict[str, Any]]:
    """Enough of each event to find it in the worker logs: a rare failure must explain itself."""
    shown = ("customer_id", "caused_by", "version", "direction", "reason", "offer_id", "receipt_id", "occurred_at")
    return [{"event_id": i, **{k: events[i][k] for k in shown if k in events[i]}} for i in sorted(ids)[:most]]


def observed(reader: OutputReader, prefix: str) -> dict[str, dict[str, Any]]:
    """Every event published, by id; an id seen twice must carry the same event both times."""
    seen: dict[str, dict[str, Any]] = {}
    for topic in EVENT_TOPICS:
        for record in reader.records[prefix + topic]:
            event = {k: v for k, v in record.items() if k != "_key"}
            previous = seen.setdefault(event["event_id"], event)
            if previous != event:
                differs = {k: (previous.get(k), event.get(k)) for k in previous.keys() | event.keys()}
                differs = {k: v for k, v in differs.items() if v[0] != v[1]}
                raise AssertionError(
                    f"event id {event['event_id']} on {topic} was published with different contents: {differs}"
                )
    return seen


def latest_statuses(reader: OutputReader, prefix: str) -> dict[str, list[dict[str, Any]]]:
    latest: dict[str, dict[str, Any]] = {}
    for snapshot in reader.records[prefix + "customer-status"]:
        current = latest.get(snapshot["customer_id"])
        if current is None or snapshot["version"] > current["version"]:
            latest[snapshot["customer_id"]] = snapshot
    return {customer: snapshot["statuses"] for customer, snapshot in latest.items()}


def duplicates(reader: OutputReader, prefix: str) -> int:
    """How many published events were repeats of an id already published."""
    total = sum(len(reader.records[prefix + topic]) for topic in EVENT_TOPICS)
    return total - len(observed(reader, prefix))
