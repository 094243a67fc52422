"""Which inputs a loyalty-inputs partition has taken, by where each came from.

An ingest agent reads a source partition (receipts, customer-events,
status-commands) in order and hands each input on to the partition of
loyalty-inputs that owns its key; the batches of one partition leave in order
(streams/outbox.py). So, on one loyalty-inputs partition, the inputs of one source
partition arrive in offset order, and any that arrives at or below the highest
offset taken is a copy: an ingest agent that crashed or lost its partition before
committing reads the source again from its last commit and routes the same inputs
a second time.

Those copies are dropped here, exactly, before the core sees them. The core's own
guard, the receipt ids a customer remembers, holds only `receipt_memory` of them:
the crash storm found a busy card's receipt coming back more than 400 of its
receipts later, refused as too old to tell apart (and, before that was fixed,
counted twice). A resend from a till is a new record at a new offset and is not
affected: the core still answers it with the first receipt message.

The positions are state like the customers': stored under `partition:{n}:sources`
in the customers table, written by the same flush as the states, after them, so a
changelog that has a position has every state change of the inputs it covers.
Inputs the loyalty agent hands on (`Envelope.forwarded`) keep their first source
and are not in that order; the core's memory guards those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from models.inputs import PARTITION_KEY_PREFIX
from streams.envelope import Source


def positions_key(partition: int) -> bytes:
    return f"{PARTITION_KEY_PREFIX}{partition}:sources".encode()


@dataclass(slots=True)
class SourcePositions:
    offsets: dict[str, int] = field(default_factory=dict)  # "topic/partition" -> highest offset taken

    def taken(self, source: Source) -> bool:
        return self.offsets.get(f"{source.topic}/{source.partition}", -1) >= source.offset

    def take(self, source: Source) -> None:
        self.offsets[f"{source.topic}/{source.partition}"] = source.offset

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.offsets)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SourcePositions:
        return cls({str(k): int(v) for k, v in orjson.loads(raw).items()})
