"""What travels on the internal `loyalty-inputs` topic, and the dead-letter record.

Inputs from outside are validated once at the edge and forwarded with their
source coordinates, so a record the core refuses later can still be sent to the
dead-letter topic with the topic, partition and offset it came from.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass
from typing import Any

#: A dead letter carries at most this much of the original value; the rest stays
#: addressable in the source topic at the partition and offset it names.
DEAD_LETTER_VALUE_LIMIT = 256 * 1024

RECEIPT = "receipt"
CLOSE_PERIOD = "close_period"
SET_STATUS = "set_status"
CUSTOMER_EVENT = "customer_event"
CARD_EVENT = "card_event"  # keyed by card: the card's record decides
CARD_RECEIPT = "card_receipt"  # a receipt with only a card number, keyed by card
MERGE_AWAY = "merge_away"  # to the temporary owner of a linked card
MERGE_IN = "merge_in"  # to the member, with the temporary owner's state
RUN_CAMPAIGNS = "run_campaigns"  # one per partition: the date-triggered campaigns of a local date
CARD_RELEASE = "card_release"  # an excluded owner's card: its record is deleted


def partition_for(key: str, partitions: int) -> int:
    """Our own partitioner for internal topics: the same on every worker, whatever client produced the input."""
    return zlib.crc32(key.encode()) % partitions


@dataclass(frozen=True, slots=True)
class Source:
    topic: str
    partition: int
    offset: int
    timestamp: float = 0.0  # the record's log timestamp, epoch seconds


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: str
    raw: str
    source: Source

    def to_bytes(self) -> bytes:
        src = self.source
        return json.dumps(
            {"kind": self.kind, "raw": self.raw, "src": [src.topic, src.partition, src.offset, src.timestamp]},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        value = json.loads(data)
        topic, partition, offset, timestamp = value["src"]
        return cls(kind=value["kind"], raw=value["raw"], source=Source(topic, partition, offset, timestamp))


def dead_letter(raw: bytes | str | None, key: bytes | None, source: Source, error: str) -> bytes:
    record: dict[str, Any] = {
        "error": error,
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "key": _text_or_base64(key)[0] if key is not None else None,
    }
    if raw is not None and len(raw) > DEAD_LETTER_VALUE_LIMIT:
        record["value_bytes"] = len(raw)
        record["value_truncated"] = True
        raw = raw[:DEAD_LETTER_VALUE_LIMIT]
    value, encoding = _text_or_base64(raw)
    record["value"] = value
    record["value_encoding"] = encoding
    return json.dumps(record, separators=(",", ":")).encode()


def _text_or_base64(data: bytes | str | None) -> tuple[str | None, str]:
    if data is None:
        return None, "none"
    if isinstance(data, str):
        return data, "text"
    try:
        return data.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"
