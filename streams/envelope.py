"""What travels on the internal `loyalty-inputs` topic.

An input that must reach another partition of the customers table (a receipt on a
partition its customer is not, a card-only receipt, every customer event and
command, and what the partition processor hands on: a card's receipt to its
owner, a merge, a card release) goes through `loyalty-inputs` as an `Envelope`
with the coordinates of the record it came from, so a refusal on the partition
that takes it still names where it was read. The envelopes for one partition
from one batch travel as one record (`encode_batch`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from models.inputs import ClosePeriod, RunCampaigns, SetStatus, parse_command, parse_customer_event, validated_receipt
from models.processor import (
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
    Handover,
    Input,
    Release,
)
from models.processor import Origin as Source
from models.schema import LoyaltyConfig

__all__ = [
    "CARD_EVENT",
    "CARD_RECEIPT",
    "CARD_RELEASE",
    "CLOSE_PERIOD",
    "CUSTOMER_EVENT",
    "MERGE_AWAY",
    "MERGE_IN",
    "RECEIPT",
    "RUN_CAMPAIGNS",
    "SET_STATUS",
    "TICK",
    "Envelope",
    "Source",
    "decode_inputs",
    "default_partition",
    "encode_batch",
    "envelope_of",
    "input_of",
    "partition_for",
]


def partition_for(key: str, partitions: int) -> int:
    """Our own partitioner for internal topics: the same on every worker, whatever client produced the input.

    It is Kafka's default (murmur2, as the Java client and aiokafka use it), so a
    receipt keyed by its customer id keeps its partition number from `receipts` to
    `loyalty-inputs`, and with it the order of its partition: the close frontier
    (models/frontier.py) then moves at the same receipt whether the pipeline runs
    live, replays, or is checked by the tests' reference.
    """
    return default_partition(key.encode(), partitions)


@functools.lru_cache(maxsize=1 << 16)
def default_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner for a key's bytes (the Java client's and aiokafka's).

    Cached (65,536 keys kept): murmur2 in Python is dear, and a receipt's events are keyed
    by a handful of customer and till ids that recur."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: str
    raw: str
    source: Source
    #: Handed on by the loyalty agent (a card's receipt to its owner, a merge, a release),
    #: still naming the input it came from, which an ingest agent routed first.
    forwarded: bool = False

    def to_bytes(self) -> bytes:
        src = self.source
        value: dict[str, Any] = {
            "kind": self.kind,
            "raw": self.raw,
            "src": [src.topic, src.partition, src.offset, src.timestamp],
        }
        if self.forwarded:
            value["fwd"] = True
        return orjson.dumps(value)

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        return _single(orjson.loads(data))


def encode_batch(envelopes: list[Envelope]) -> bytes:
    """Many inputs for one partition of loyalty-inputs as one record, in order (streams/outbox.py)."""
    return orjson.dumps({"batch": [_row(e) for e in envelopes]})


def _row(e: Envelope) -> list[Any]:
    src = e.source
    row = [e.kind, e.raw, src.topic, src.partition, src.offset, src.timestamp]
    if e.forwarded:
        row.append(1)
    return row


def _single(value: dict[str, Any]) -> Envelope:
    topic, partition, offset, timestamp = value["src"]
    return Envelope(value["kind"], value["raw"], Source(topic, partition, offset, timestamp), bool(value.get("fwd")))


def decode_inputs(data: bytes) -> list[Envelope]:
    """The inputs a loyalty-inputs record carries: a batch, or one envelope as written before batches."""
    value = orjson.loads(data)
    batch = value.get("batch")
    if batch is None:
        return [_single(value)]
    return [Envelope(r[0], r[1], Source(r[2], r[3], r[4], r[5]), len(r) > 6) for r in batch]


def envelope_of(item: Input) -> Envelope:
    """An input as it travels to the partition that takes it."""
    kind, value = item.kind, item.value
    assert item.origin is not None
    if kind == RECEIPT and item.forwarded:  # for its owner or a member: the customer it now counts for
        body = _decoded(item.raw)
        body["customer_id"] = value.customer_id
        raw = json.dumps(body)
    elif kind in (MERGE_AWAY, MERGE_IN):
        handover: Handover = value
        fields = {"event": _text(item.raw), "from": handover.donor, "into": handover.into}
        if handover.state is not None:
            fields["donor"] = handover.state.decode()
        raw = json.dumps(fields)
    elif kind == CARD_RELEASE:
        released: Release = value
        raw = json.dumps({"card": released.card, "owner": released.owner})
    elif kind == TICK:
        raw = json.dumps({"at": value.isoformat()})
    else:
        raw = _text(item.raw)
    return Envelope(kind, raw, item.origin, item.forwarded)


def input_of(envelope: Envelope, config: LoyaltyConfig, now: datetime) -> Input:
    """An envelope read back as the input it carries. Its contents were judged where it entered
    the pipeline; a command is dated by its first record's time, so taking it again after a
    crash gives the same result."""
    kind, raw, source = envelope.kind, envelope.raw, envelope.source
    value: Any
    if kind in (RECEIPT, CARD_RECEIPT):
        value = validated_receipt(raw)
    elif kind in (CUSTOMER_EVENT, CARD_EVENT):
        value = parse_customer_event(raw, config, now)
    elif kind in (SET_STATUS, CLOSE_PERIOD, RUN_CAMPAIGNS):
        command: SetStatus | ClosePeriod | RunCampaigns = parse_command(raw, config, _instant(source.timestamp))
        value = command
    elif kind in (MERGE_AWAY, MERGE_IN):
        body = json.loads(raw)
        event = parse_customer_event(body["event"], config, now)
        donor = body["donor"].encode() if "donor" in body else None
        value = Handover(event, body["from"], body["into"], donor)
        raw = body["event"]
    elif kind == CARD_RELEASE:
        body = json.loads(raw)
        value = Release(body["card"], body["owner"])
    elif kind == TICK:
        value = datetime.fromisoformat(json.loads(raw)["at"])
    else:
        raise ValueError(f"{kind!r} is not an input that travels between partitions")
    return Input(kind, value, raw, source, envelope.forwarded)


def _decoded(raw: bytes | str | None) -> dict[str, Any]:
    value = orjson.loads(raw or b"")
    assert isinstance(value, dict)
    return value


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw if isinstance(raw, str) else raw.decode()


def _instant(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
