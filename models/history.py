"""History through the core: the inputs a pipeline received, in order, and what they make.

`Replayer` runs the partition processor (models/processor.py) the live worker
runs, without Kafka: it resolves cards, hands a temporary owner's counters to the
member on a card link, moves each partition's close frontier at the same input and
closes the customers it leaves behind, and runs the date-triggered campaigns once
per local day. A configuration replayed here behaves as it would have live. `loyalty what-if` replays two
configurations side by side; `loyalty replay` rebuilds the live state under a
new one.

Nothing it makes is made before it is read: a replay reads no event, a what-if
its offers and status changes, and a receipt message's lines are rendered (from
a copy taken when the receipt counted) only for the messages a rebuilt state keeps.

The days on which campaigns ran live are the worker's wall-clock days; here they
are the days the inputs' own times reach (each day's run before its first
input), which is what a worker that had been running all along would have done.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, overload

from models.cards import CardState
from models.errors import InvalidInput
from models.events import Output
from models.inputs import (
    ClosePeriod,
    RunCampaigns,
    SetStatus,
    decode_object,
    parse_command,
    parse_customer_event,
    receipt_from_object,
)
from models.periods import local_date
from models.processor import (
    CLOSE_PERIOD,
    RUN_CAMPAIGNS,
    SET_STATUS,
    Input,
    Outcome,
    Processor,
    event_input,
    receipt_input,
    without_snapshots,
)
from models.state import CustomerState


class Source(StrEnum):
    """Which input topic a record came from."""

    RECEIPTS = "receipts"
    CUSTOMER_EVENTS = "customer-events"
    STATUS_COMMANDS = "status-commands"


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    source: Source
    value: bytes
    timestamp: float  # epoch seconds the broker gave the record: its arrival, which orders the inputs

    def __reduce__(self) -> tuple[type[Any], tuple[Any, ...]]:
        return by_fields(self)


def by_fields(record: Any) -> tuple[type[Any], tuple[Any, ...]]:
    """A dataclass's `__reduce__`: remade by calling the class with its fields in order.

    Compiled (models/compiled.py), a frozen class refuses the attribute-by-attribute restore
    pickle would otherwise make."""
    return (type(record), tuple(getattr(record, each.name) for each in dataclasses.fields(record)))


#: A source's one-byte code in `PackedRecords`, and back.
_SOURCES = tuple(Source)
_CODE = {source: code for code, source in enumerate(_SOURCES)}
RECEIPT_CODE: Final = _CODE[Source.RECEIPTS]
# Read once, as `_SNAPSHOT`: the replayer asks every record which source it came from.
_RECEIPTS: Final = Source.RECEIPTS
_CUSTOMER_EVENTS: Final = Source.CUSTOMER_EVENTS


class PackedRecords(Sequence[HistoryRecord]):
    """History records in four flat buffers instead of three objects each.

    A replay forks (streams/shards.forked), and its children inherit the history.
    Reading a record of a list increments the record's reference count, a write,
    so every page of records a child reads would be copied for it, which costs a
    split replay more than the split saves. Here a child writes to four objects of
    the parent's in all, and each record it reads is made afresh in its own memory
    (`value` copies the bytes out).
    """

    __slots__ = ("_blob", "_starts", "codes", "stamps")

    def __init__(self, records: Iterable[HistoryRecord] = ()) -> None:
        records = records if isinstance(records, Sequence) else list(records)
        # Comprehensions: much cheaper than a loop of appends at a month's size.
        self._fill(
            bytes([_CODE[record.source] for record in records]),
            array("d", [record.timestamp for record in records]),
            [record.value for record in records],
        )

    def _fill(self, codes: bytes, stamps: array[float], values: list[bytes]) -> None:
        #: Per record, its source's code (`RECEIPT_CODE` for a receipt) and its timestamp.
        self.codes, self.stamps = codes, stamps
        self._starts = array("q", [0])
        self._starts.extend(itertools.accumulate(map(len, values)))
        self._blob = b"".join(values)

    def __len__(self) -> int:
        return len(self.codes)

    def value(self, index: int) -> bytes:
        return self._blob[self._starts[index] : self._starts[index + 1]]

    def source(self, index: int) -> Source:
        return _SOURCES[self.codes[index]]

    @overload
    def __getitem__(self, index: int) -> HistoryRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[HistoryRecord]: ...
    def __getitem__(self, index: int | slice) -> HistoryRecord | list[HistoryRecord]:
        if isinstance(index, slice):
            return [self[n] for n in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("record index out of range")
        return HistoryRecord(self.source(index), self.value(index), self.stamps[index])

    def __iter__(self) -> Iterator[HistoryRecord]:
        for index in range(len(self.codes)):
            yield self[index]

    @classmethod
    def merged(cls, parts: Sequence[tuple[Source, Sequence[bytes], Sequence[float]]]) -> PackedRecords:
        """Partitions' records (each its source, values and broker timestamps, in log order) in
        one arrival order: by timestamp, a tie going to the earlier part, each part's own order
        kept, as `heapq.merge` orders them. Packed as they are merged, with no record object
        made for each (streams/history.read_history), which spares a month's read one
        object per record."""
        stamps = list(itertools.chain.from_iterable([part[2] for part in parts]))
        values = list(itertools.chain.from_iterable([part[1] for part in parts]))
        codes = b"".join([bytes([_CODE[source]]) * len(part_values) for source, part_values, _ in parts])
        if all(_ascending(part[2]) for part in parts):
            # Runs already in order: a stable sort merges them as the heap would, in C.
            order = sorted(range(len(stamps)), key=stamps.__getitem__)
        else:  # a producer's clock went back: the heap's merge, whose order is not a sort's then
            starts = itertools.accumulate([len(part[1]) for part in parts], initial=0)
            runs = [
                zip(part[2], itertools.repeat(k), itertools.count(start))
                for k, (part, start) in enumerate(zip(parts, starts, strict=False))  # starts: one more
            ]
            order = [index for _, _, index in heapq.merge(*runs)]
        packed = cls()
        packed._fill(
            bytes(map(codes.__getitem__, order)),
            array("d", map(stamps.__getitem__, order)),
            list(map(values.__getitem__, order)),
        )
        return packed

    def indices(self, source: Source) -> Iterator[int]:
        """The indices of the records from `source`, found without reading the others."""
        codes, code, index = self.codes, bytes([_CODE[source]]), -1
        while (index := codes.find(code, index + 1)) >= 0:
            yield index


def _ascending(stamps: Sequence[float]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(stamps))


def packed(records: Iterable[HistoryRecord]) -> PackedRecords:
    """`records` as `PackedRecords` (as they are, if they already are)."""
    return records if isinstance(records, PackedRecords) else PackedRecords(records)


@dataclass
class Replayer(Processor):
    """The partition processor over every partition at once, with the states in dictionaries:
    an input is taken as the live worker takes it (a forward at once, a moved frontier walked
    at once), and the date-triggered campaigns of each local day run before the first input
    that reaches it."""

    #: Receipt messages rendered only when read: a replay reads only those its states keep.
    lines_when_read: bool = True
    walk_at_once: bool = True
    #: Run each day's date-triggered campaigns (birthday bonus, at-risk notices).
    campaigns: bool = True
    states: dict[str, CustomerState] = field(default_factory=dict)
    cards: dict[str, CardState] = field(default_factory=dict)
    refused: int = 0  # inputs the worker would have sent to dead letters
    inputs: int = 0
    _campaign_day: date | None = None
    #: Per partition, its customers in the order they first came.
    _members: dict[int, dict[str, None]] = field(default_factory=dict)

    # --- storage: dictionaries ----------------------------------------------------------------

    def customer(self, customer_id: str) -> CustomerState | None:
        return self.states.get(customer_id)

    def keep(self, customer_id: str, state: CustomerState) -> None:
        if customer_id not in self.states:
            partition = self.partition_of(customer_id)
            members = self._members.get(partition)
            if members is None:
                members = self._members[partition] = {}
            members[customer_id] = None
        self.states[customer_id] = state

    def card(self, number: str) -> CardState | None:
        return self.cards.get(number)

    def keep_card(self, number: str, card: CardState) -> None:
        self.cards[number] = card

    def drop_card(self, number: str) -> None:
        self.cards.pop(number, None)

    def customers_of(self, partition: int) -> list[str]:
        return list(self._members.get(partition, ()))

    def forward(self, key: str, item: Input, out: Outcome) -> None:
        self.take(item, self.partition_of(key), out)

    # --- inputs -----------------------------------------------------------------------------

    def feed(self, record: HistoryRecord) -> list[Output]:
        """One input, as the worker would have processed it on arrival; returns its events."""
        self.inputs += 1
        out = Outcome()
        try:
            if record.source is _RECEIPTS:  # its arrival as epoch seconds: see inputs.ahead_of_clock
                self._take_receipt(decode_object(record.value), record.value, record.timestamp, out)
            elif record.source is _CUSTOMER_EVENTS:
                now = datetime.fromtimestamp(record.timestamp, UTC)
                event = parse_customer_event(record.value, self.config, now)
                self._campaigns_until(event.occurred_at, out)
                key, item = event_input(event, record.value, None)
                self.take(item, self.partition_of(key), out)
            else:
                now = datetime.fromtimestamp(record.timestamp, UTC)
                command = parse_command(record.value, self.config, now)
                self._campaigns_until(now, out)
                self._command(command, record.value, out)
        except InvalidInput:
            self.refused += 1
        self.refused += len(out.refused)
        return without_snapshots(out.outputs)

    def _take_receipt(
        self, data: dict[str, Any], raw: bytes, now: datetime | float, out: Outcome, message: bool = True
    ) -> None:
        """`now`: when the receipt arrived, as a datetime or as epoch seconds. Without `message`,
        its receipt message is not made (`apply_receipt`)."""
        receipt = receipt_from_object(data, raw, self.config, now)
        self._campaigns_until(receipt.issued_at, out)
        key, item = receipt_input(receipt, raw, None)
        item.message = message
        self.take(item, self.partition_of(key), out)

    def _command(self, command: SetStatus | ClosePeriod | RunCampaigns, raw: bytes, out: Outcome) -> None:
        if isinstance(command, SetStatus):
            self.take(Input(SET_STATUS, command, raw), self.partition_of(command.customer_id), out)
            return
        kind = CLOSE_PERIOD if isinstance(command, ClosePeriod) else RUN_CAMPAIGNS
        for partition in range(self.partitions):  # every partition takes one, for its own customers
            self.take(Input(kind, command, raw), partition, out)

    def finish(self, at: datetime) -> list[Output]:
        """The wall clock reaches `at` with nothing more arriving: campaigns up to that day run, and
        every partition's periods that ended a grace before `at` close, as the idle clock closes them."""
        out = Outcome()
        self._campaigns_until(at, out)
        for partition in range(self.partitions):
            self.tick(partition, at, out)
        return without_snapshots(out.outputs)

    # --- the daily campaign run -------------------------------------------------------------

    def _campaigns_until(self, instant: datetime, out: Outcome) -> None:
        if not self.campaigns:
            return
        today = local_date(instant, self.config.timezone)
        if self._campaign_day is None:
            self._campaign_day = today - timedelta(days=1)
        while self._campaign_day < today:
            self._campaign_day += timedelta(days=1)
            for partition in range(self.partitions):
                self.run_campaigns(partition, self._campaign_day, out)
