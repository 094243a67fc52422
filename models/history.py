"""History through the core: the inputs a pipeline received, in order, and what they make.

`Replayer` does what the worker's agents do (streams/agents.py), without Kafka:
it resolves cards, hands a temporary owner's counters to the member on a card
link, moves each partition's close frontier at the same input and closes the
customers it leaves behind, and runs the date-triggered campaigns once per local
day. It calls the very functions the agents call, so a configuration replayed
here behaves as it would have live. `loyalty what-if` replays two
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, overload

from config.schema import LoyaltyConfig
from models.campaigns import daily_run
from models.cards import CardState, owner_of, record_card_event, release
from models.engine import (
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
from models.frontier import CloseFrontier, advanced, clock_cause, next_threshold
from models.inputs import (
    CARD_EVENTS,
    ClosePeriod,
    CustomerEvent,
    Receipt,
    RunCampaigns,
    SetStatus,
    decode_object,
    parse_command,
    parse_customer_event,
    receipt_from_object,
)
from models.periods import PeriodKind, epoch_of, local_date, period_containing
from models.state import CustomerState


class Source(StrEnum):
    """Which input topic a record came from."""

    RECEIPTS = "receipts"
    CUSTOMER_EVENTS = "customer-events"
    STATUS_COMMANDS = "status-commands"


# Read once: an enum member looked up on its class costs about 70 ns on Python 3.11, per output here.
_SNAPSHOT = OutputKind.CUSTOMER_STATUS
_NEVER = float("-inf")  # the threshold of a partition whose frontier has not moved yet


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
    so every page of records a child reads was copied for it: splitting 3,000,000
    receipts in two cost each child 580,000 page copies, 6 s of system time and
    14 s in all (63 s against 49 s for the same shard in one process). Here a
    child writes to four objects of the parent's in all, and each record it reads
    is made afresh in its own memory (`value` copies the bytes out, 0.1 µs).
    """

    __slots__ = ("_blob", "_starts", "codes", "stamps")

    def __init__(self, records: Iterable[HistoryRecord] = ()) -> None:
        records = records if isinstance(records, Sequence) else list(records)
        # Comprehensions: a loop of appends took 2.4 times as long.
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
        made for each (streams/history.read_history): reading 3,000,000 receipts from the
        embedded broker, then packing them for a replay, took 41.0 to 48.8 s (29 to 32 s of
        CPU) this way, against 43.2 to 55.0 s (31 to 35 s) with records made, merged by the
        heap and packed (four runs each, alternating, on a machine whose pace varied)."""
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
class Replayer:
    config: LoyaltyConfig
    #: The pipeline's partitioner of `loyalty-inputs` (streams/envelope.partition_for): the
    #: close frontier is per partition, so a replay must group customers as the workers do.
    partitioner: Callable[[str], int]
    partitions: int
    #: Run each day's date-triggered campaigns (birthday bonus, at-risk notices).
    campaigns: bool = True
    #: Make only what the rebuilt states keep (`apply_receipt`'s `state_only`): `loyalty replay`
    #: reads nothing else, a what-if reads the offers too.
    state_only: bool = False
    states: dict[str, CustomerState] = field(default_factory=dict)
    cards: dict[str, CardState] = field(default_factory=dict)
    frontiers: dict[int, CloseFrontier] = field(default_factory=dict)
    refused: int = 0  # inputs the worker would have sent to dead letters
    inputs: int = 0
    _partition_of: dict[str, int] = field(default_factory=dict)
    _campaign_day: date | None = None
    _thresholds: dict[int, float] = field(default_factory=dict)  # partition -> when its frontier moves next

    # --- inputs -----------------------------------------------------------------------------

    def feed(self, record: HistoryRecord) -> list[Output]:
        """One input, as the worker would have processed it on arrival; returns its events."""
        self.inputs += 1
        outputs: list[Output] = []
        try:
            if record.source is _RECEIPTS:  # its arrival as epoch seconds: see inputs.ahead_of_clock
                self._take_receipt(decode_object(record.value), record.value, record.timestamp, outputs)
            elif record.source is _CUSTOMER_EVENTS:
                now = datetime.fromtimestamp(record.timestamp, UTC)
                event = parse_customer_event(record.value, self.config, now)
                self._campaigns_until(event.occurred_at, outputs)
                self._customer_event(event, outputs)
            else:
                now = datetime.fromtimestamp(record.timestamp, UTC)
                command = parse_command(record.value, self.config, now)
                self._campaigns_until(now, outputs)
                self._command(command, outputs)
        except InvalidInput:
            self.refused += 1
        return self._kept(outputs)

    def _take_receipt(
        self, data: dict[str, Any], raw: bytes, now: datetime | float, outputs: list[Output], message: bool = True
    ) -> None:
        """`now`: when the receipt arrived, as a datetime or as epoch seconds."""
        receipt = receipt_from_object(data, raw, self.config, now)
        self._campaigns_until(receipt.issued_at, outputs)
        self._receipt(receipt, outputs, message)

    @staticmethod
    def _kept(outputs: list[Output]) -> list[Output]:
        # No customer-status snapshots: a what-if and a replay read only the final states.
        return [o for o in outputs if o.kind is not _SNAPSHOT]

    def finish(self, at: datetime) -> list[Output]:
        """The wall clock reaches `at` with nothing more arriving: campaigns up to that day run, and
        every partition's periods that ended a grace before `at` close, as the idle clock closes them."""
        outputs: list[Output] = []
        self._campaigns_until(at, outputs)
        for partition in range(self.partitions):
            self._observe(partition, at, clock_cause(at.isoformat()), outputs)
        return self._kept(outputs)

    # --- what the agents do -----------------------------------------------------------------

    def _partition(self, customer_id: str) -> int:
        partition = self._partition_of.get(customer_id)
        if partition is None:
            partition = self._partition_of[customer_id] = self.partitioner(customer_id)
        return partition

    def _observe(self, partition: int, instant: datetime, cause: str, outputs: list[Output]) -> None:
        if epoch_of(instant) < self._thresholds.get(partition, _NEVER):
            return  # the agents' shortcut too: most inputs are nowhere near a period's end
        moved = advanced(self.frontiers.get(partition), instant, cause, self.config)
        if moved is None:
            return
        self.frontiers[partition] = moved
        self._thresholds[partition] = next_threshold(moved, self.config)
        for customer_id, state in self.states.items():  # the walk, all at once
            if self._partition(customer_id) == partition and is_due(state, moved.periods):
                outputs += close_due(state, moved.periods, moved.cause, self.config).outputs
        self.frontiers[partition] = dataclasses.replace(moved, walked=True)

    def _arrive(self, partition: int, instant: datetime, cause: str, outputs: list[Output]) -> None:
        """A receipt of the partition's customer arrives: the frontier may move."""
        if epoch_of(instant) >= self._thresholds.get(partition, _NEVER):  # _observe's own first test
            self._observe(partition, instant, cause, outputs)

    def _current(self, customer_id: str, outputs: list[Output], partition: int | None = None) -> CustomerState | None:
        """The customer's state, closed up to its partition's frontier (`partition`, if known already)."""
        state = self.states.get(customer_id)
        frontier = self.frontiers.get(self._partition(customer_id) if partition is None else partition)
        if state is not None and frontier is not None and is_due(state, frontier.periods):
            outputs += close_due(state, frontier.periods, frontier.cause, self.config).outputs
        return state

    def _keep(self, customer_id: str, state: CustomerState | None) -> None:
        if state is not None:
            self.states[customer_id] = state

    def _receipt(self, receipt: Receipt, outputs: list[Output], message: bool = True) -> None:
        """Without `message`, its receipt message is not made (`apply_receipt`)."""
        if receipt.customer_id is None and receipt.card_number is not None:
            owner = owner_of(self.cards.get(receipt.card_number))
            if owner is not None:
                receipt = receipt._replace(customer_id=owner)
        customer_id = receipt.customer_id
        if customer_id is None:
            if not self.state_only:  # anonymous: a message only, which no state keeps
                outputs += apply_receipt(None, receipt, self.config).outputs
            return
        partition = self._partition(customer_id)
        self._arrive(partition, receipt.issued_at, receipt.receipt_id, outputs)
        state = self._current(customer_id, outputs, partition)
        if state is not None and state.merged_into is not None:
            self._receipt(receipt._replace(customer_id=state.merged_into), outputs, message)
            return
        # Lines when read: a replay reads only the messages its states keep for their latest receipts.
        result = apply_receipt(
            state, receipt, self.config, lines_when_read=True, state_only=self.state_only, message=message
        )
        if not result.duplicate:
            self._keep(customer_id, result.state)
        outputs += result.outputs

    def _customer_event(self, event: CustomerEvent, outputs: list[Output]) -> None:
        if event.type not in CARD_EVENTS:
            self._apply_event(event.customer_id, event, outputs)
            return
        card = record_card_event(self.cards, event)
        if card is None:
            return
        for step in card.routes:
            if step.kind == "customer_event":
                self._apply_event(step.customer_id, event, outputs)
                continue
            assert step.into is not None
            result, donor = merge_away(
                self._current(step.customer_id, outputs),
                step.customer_id,
                step.into,
                event.event_id,
                event.occurred_at,
                self.config,
            )
            if result.duplicate or result.state is None:
                continue
            self._keep(step.customer_id, result.state)
            outputs += result.outputs
            merged = merge_into(
                self._current(step.into, outputs),
                CustomerState.from_bytes(donor),
                step.into,
                event.event_id,
                event.occurred_at,
                self.config,
            )
            if not merged.duplicate:
                self._keep(step.into, merged.state)
            outputs += merged.outputs

    def _apply_event(self, customer_id: str, event: CustomerEvent, outputs: list[Output]) -> None:
        result = apply_customer_event(self._current(customer_id, outputs), event, self.config)
        if not result.duplicate:
            self._keep(customer_id, result.state)
        outputs += result.outputs
        for number in result.released_cards:
            if release(self.cards.get(number), customer_id):
                del self.cards[number]

    def _command(self, command: SetStatus | ClosePeriod | RunCampaigns, outputs: list[Output]) -> None:
        if isinstance(command, SetStatus):
            result = set_status(self._current(command.customer_id, outputs), command, self.config)
            if not result.duplicate:
                self._keep(command.customer_id, result.state)
            outputs += result.outputs
        elif isinstance(command, ClosePeriod):
            for customer_id in list(self.states):
                state = self._current(customer_id, outputs)
                assert state is not None
                outputs += close_period(state, command, self.config).outputs
        else:
            self._run_campaigns(command.day, outputs)

    # --- the daily campaign run -------------------------------------------------------------

    def _campaigns_until(self, instant: datetime, outputs: list[Output]) -> None:
        if not self.campaigns:
            return
        today = local_date(instant, self.config.timezone)
        if self._campaign_day is None:
            self._campaign_day = today - timedelta(days=1)
        while self._campaign_day < today:
            self._campaign_day += timedelta(days=1)
            self._run_campaigns(self._campaign_day, outputs)

    def _run_campaigns(self, day: date, outputs: list[Output]) -> None:
        at_risk = self._at_risk_day(day)
        birthdays = any(offer.trigger == "birthday" for offer in self.config.offers)
        for customer_id, state in self.states.items():
            if not (at_risk or (birthdays and state.birth_date is not None)):
                continue
            current = self._current(customer_id, outputs)
            assert current is not None
            outputs += daily_run(current, day, self.config)

    def _at_risk_day(self, day: date) -> bool:
        """Whether `day` is within some system's at-risk days (nobody can get a notice otherwise)."""
        for system in self.config.status_systems:
            if system.at_risk_days is None:
                continue
            period = period_containing(
                datetime(day.year, day.month, day.day, 12, tzinfo=self.config.timezone),
                PeriodKind(system.period),
                self.config.timezone,
            )
            if (period.last_day - day).days < system.at_risk_days:
                return True
        return False
