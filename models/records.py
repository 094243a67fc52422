"""A fetch's records through the partition processor, each step one loop of the compiled core.

The worker (streams/intake.py) hands over a partition's records of a fetch, and per record
the live path parses it (`parse_all`; receipts are routed too: `route_receipts`), takes it
(`take_all`) and encodes what it made (`send_events`). Written here, these loops run compiled with the rest of the
core (models/compiled.py), not as interpreted Python around it; what the worker keeps is
per batch: logging, metrics, the producer's batches.

Nothing here knows Kafka: a record is anything with a value, a key, an offset and a
timestamp in epoch milliseconds (aiokafka's ConsumerRecord), and what must not be taken
for the input's fault (the broker, the network) is named by the caller (`passes`): it is
raised, never dead-lettered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final, Generic, Protocol, TypeVar

import orjson

from models.errors import InvalidInput
from models.events import Output, OutputKind
from models.inputs import parse_receipt
from models.processor import Input, Origin, Outcome, Processor, receipt_input
from models.schema import LoyaltyConfig

#: A record that is not taken: its value, key, where it was read, and why.
DeadRecord = tuple[bytes | str | None, bytes | None, Origin, str]
#: A record whose parsing raised what is not a refusal (a bug): the worker logs it, then dead-letters it.
FailedRecord = tuple[bytes | str | None, bytes | None, Origin, Exception]
#: Exceptions that are not the input's fault: raised as they are.
Passes = tuple[type[BaseException], ...]
T = TypeVar("T")

_RECEIPT_MESSAGE: Final = OutputKind.RECEIPT_MESSAGE
_STATUS_CHANGE: Final = OutputKind.STATUS_CHANGE
_OFFER_TRIGGER: Final = OutputKind.OFFER_TRIGGER
_SNAPSHOT: Final = OutputKind.CUSTOMER_STATUS


class Record(Protocol):
    @property
    def value(self) -> bytes | None: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def offset(self) -> int: ...

    @property
    def timestamp(self) -> int: ...


class Parsed(Generic[T]):
    """A partition's records parsed: what each became (`parsed`, in their order), those
    refused, and those whose parsing failed."""

    __slots__ = ("failed", "parsed", "refused")

    def __init__(self) -> None:
        self.parsed: list[T] = []
        self.refused: list[DeadRecord] = []
        self.failed: list[FailedRecord] = []


def parse_all(
    records: Sequence[Record],
    topic: str,
    partition: int,
    parse: Callable[[bytes | None, Origin], T],
    passes: Passes,
) -> Parsed[T]:
    """`parse(value, origin)` of each record. An invalid input (`InvalidInput`) is refused with
    its reason; what is not the input's fault (`passes`) is raised; anything else is a bug in
    the parsing, and the record is kept in `failed` with it."""
    done: Parsed[T] = Parsed()
    parsed, refused, failed = done.parsed, done.refused, done.failed
    for record in records:
        value = record.value
        origin = Origin(topic, partition, record.offset, record.timestamp / 1000)
        try:
            parsed.append(parse(value, origin))
        except InvalidInput as exc:
            refused.append((value, record.key, origin, str(exc)))
        except passes:
            raise
        except Exception as exc:
            failed.append((value, record.key, origin, exc))
    return done


class Routed:
    """A `receipts` partition's records: those to take on this partition (`here`), those for
    another (`away`, with its number), those refused, and those whose parsing failed."""

    __slots__ = ("away", "failed", "here", "refused")

    def __init__(self, refused: list[DeadRecord], failed: list[FailedRecord]) -> None:
        self.here: list[Input] = []
        self.away: list[tuple[int, Input]] = []
        self.refused = refused
        self.failed = failed


def route_receipts(
    records: Sequence[Record],
    topic: str,
    partition: int,
    config: LoyaltyConfig,
    now: datetime,
    processor: Processor,
    take_here: bool,
    passes: Passes,
) -> Routed:
    """Each receipt parsed and sent to its customer's partition (its card's, for one that names
    only a card): kept in `here` where that is `partition` and `take_here` holds, else in `away`."""

    def parse(value: bytes | None, origin: Origin) -> tuple[int, Input]:
        key, item = receipt_input(parse_receipt(value, config, now), value, origin)
        return processor.partition_of(key), item

    parsed = parse_all(records, topic, partition, parse, passes)
    routed = Routed(parsed.refused, parsed.failed)
    here, away = routed.here, routed.away
    for target, item in parsed.parsed:
        if take_here and target == partition:
            here.append(item)
        else:
            away.append((target, item))
    return routed


class Taken:
    """What `take_all` did: how many inputs it took, the one that raised (it stopped there),
    and the Kafka timestamps of the receipts whose messages it made (their ages at sending)."""

    __slots__ = ("count", "error", "failed", "sent_at")

    def __init__(self) -> None:
        self.count = 0
        self.failed: Input | None = None
        self.error: Exception | None = None
        self.sent_at: list[float] = []


def take_all(
    processor: Processor,
    partition: int,
    items: Sequence[Input],
    out: Outcome,
    poison: set[tuple[str, str, int, int]],
    passes: Passes,
) -> Taken:
    """A partition's inputs in order, but those in `poison` (kind, topic, partition, offset).
    An input whose processing raises (a bug) joins `poison` and `out.refused`, and ends the run."""
    taken = Taken()
    outputs = out.outputs
    for item in items:
        origin = item.origin
        if poison and origin is not None and (item.kind, origin.topic, origin.partition, origin.offset) in poison:
            continue
        before = len(outputs)
        try:
            processor.take(item, partition, out)
        except passes:
            raise
        except Exception as exc:
            assert origin is not None
            poison.add((item.kind, origin.topic, origin.partition, origin.offset))
            out.refused.append((item, f"{type(exc).__name__}: {exc}"))
            taken.failed, taken.error = item, exc
            break
        taken.count += 1
        if origin is not None and origin.timestamp:
            for index in range(before, len(outputs)):
                if outputs[index].kind is _RECEIPT_MESSAGE:
                    taken.sent_at.append(origin.timestamp)
    return taken


class Sent:
    """How many events `send_events` handed over: per kind, per status change (system,
    direction, level) and per offer; counted per batch, for one metric update per label set."""

    __slots__ = ("changes", "kinds", "offers")

    def __init__(self) -> None:
        self.kinds: dict[OutputKind, int] = {}
        self.changes: dict[tuple[str, str, str], int] = {}
        self.offers: dict[str, int] = {}


def send_events(
    outputs: Sequence[Output],
    snapshots: dict[str | None, Output],
    topics: dict[OutputKind, str],
    add: Callable[[str, bytes | None, bytes], object],
) -> Sent:
    """Each event encoded and handed to `add(topic, key, value)`, but customer-status snapshots:
    a customer's latest replaces any waiting in `snapshots` (a snapshot is made when read, so
    those replaced never are), and goes at the next commit. An erasing snapshot goes at once:
    the sinks must see the very one that names the receipts to erase."""
    sent = Sent()
    kinds, changes, offers = sent.kinds, sent.changes, sent.offers
    for output in outputs:
        kind = output.kind
        key = output.key
        if kind is _SNAPSHOT:
            snapshots.pop(key, None)
            if not output.erases:
                snapshots[key] = output
                continue
        value = output.value
        add(topics[kind], key.encode() if key is not None else None, orjson.dumps(value))
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind is _STATUS_CHANGE:
            change = (str(value["status_system"]), str(value["direction"]), str(value["current"]))
            changes[change] = changes.get(change, 0) + 1
        elif kind is _OFFER_TRIGGER:
            offer = str(value["offer_id"])
            offers[offer] = offers.get(offer, 0) + 1
    return sent


def send_snapshots(
    snapshots: dict[str | None, Output], topic: str, add: Callable[[str, bytes | None, bytes], object]
) -> int:
    """The customer-status snapshots waiting for a commit (`send_events`), each customer's
    latest, encoded and handed to `add`; returns how many, with `snapshots` emptied."""
    for key, snapshot in snapshots.items():
        add(topic, (key or "").encode(), orjson.dumps(snapshot.value))
    count = len(snapshots)
    snapshots.clear()
    return count
