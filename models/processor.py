"""The partition processor: a partition's inputs, in their order, through the rules.

Customers, the cards keyed to them and each partition's close frontier are the state
the rules keep between inputs. Between the rules of one input and the next, the
processor decides everything else, for the live worker and for every replay alike:

- before a customer's input, the periods its partition's frontier has left behind are
  closed (`current`), and a customer an input creates behind the frontier is brought
  up to it at once; an input whose time passes the next threshold moves the frontier
  and starts a walk that closes every other customer of the partition;
- a receipt that names only a card goes to the card's record, which names its owner;
- a card event changes the card's record and hands what concerns a customer on to
  that customer (a card link: the temporary owner's state away, then into the member);
- a receipt for a customer merged away counts for the member;
- an exclusion releases the customer's cards;
- `close_period` closes a period for every customer of the partition, and a campaign
  run grants the day's campaign offers.

The storage (`customer`, `keep`, ...) and what reaches another partition (`forward`) are
the driver's: the live worker keeps states in its table and hands forwards on through
`loyalty-inputs`; a replay keeps them in dictionaries and takes a forward at once.
Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final, NamedTuple, Protocol, TypeVar

from models.campaigns import daily_run
from models.cards import CardState, apply_card_event, card_key, owner_of, release
from models.engine import (
    Result,
    apply_customer_event,
    apply_receipt,
    close_due,
    close_period,
    is_due,
    merge_away,
    merge_into,
    recall,
    recall_ids,
    set_status,
)
from models.errors import InvalidInput
from models.events import ERASED_RECEIPTS, Output, OutputKind
from models.frontier import CloseFrontier, advanced, clock_cause, next_threshold, partition_key
from models.inputs import CARD_EVENTS, RESERVED_PREFIXES, ClosePeriod, CustomerEvent, Receipt, SetStatus, receipt_key
from models.periods import PeriodKind, epoch_of, period_containing
from models.schema import LoyaltyConfig
from models.state import CustomerState, KeptReceipt, ReceiptRecord

# What a partition takes: the kinds of `Input`.
RECEIPT: Final = "receipt"  # a receipt naming its customer, on the customer's partition
CARD_RECEIPT: Final = "card_receipt"  # a receipt naming only a card, on the card's partition
CUSTOMER_EVENT: Final = "customer_event"
CARD_EVENT: Final = "card_event"  # a card event, on the card's partition
SET_STATUS: Final = "set_status"
CLOSE_PERIOD: Final = "close_period"  # every partition takes one
RUN_CAMPAIGNS: Final = "run_campaigns"  # every partition takes one
MERGE_AWAY: Final = "merge_away"  # to a card's temporary owner: hand the state over
MERGE_IN: Final = "merge_in"  # to the member, with the temporary owner's state
CARD_RELEASE: Final = "card_release"  # to an excluded owner's card: forget the owner
TICK: Final = "tick"  # the wall clock reaches an idle partition

_NEVER: Final = float("-inf")  # the threshold of a partition whose frontier has not moved yet
_SNAPSHOT: Final = OutputKind.CUSTOMER_STATUS


class Origin(NamedTuple):
    """Where an input was read: its topic, partition and offset, and the record's log time
    (epoch seconds); a dead letter names it."""

    topic: str
    partition: int
    offset: int
    timestamp: float = 0.0


@dataclass(frozen=True, slots=True)
class Handover:
    """A card link's merge: `donor` (a temporary owner) into the member `into`; `state` is the
    donor's state as handed over (MERGE_IN)."""

    event: CustomerEvent
    donor: str
    into: str
    state: bytes | None = None


@dataclass(frozen=True, slots=True)
class Release:
    """An excluded customer's card: its record forgets `owner` if it still names them."""

    card: str
    owner: str


@dataclass(slots=True)
class Input:
    """One input of a partition: its kind, what it carries, and where it came from.

    `raw` is what the producer sent (what a dead letter carries, and what a forward
    re-sends); `forwarded` marks an input one partition hands to another, which keeps
    its first origin. Without `message`, a receipt's message is not made (a split
    replay's receipts that no rebuilt state keeps the message of)."""

    kind: str
    value: Any
    raw: bytes | str | None = None
    origin: Origin | None = None
    forwarded: bool = False
    message: bool = True


@dataclass(slots=True)
class Outcome:
    """What a run of inputs made: events, inputs for other partitions, refusals and tallies."""

    outputs: list[Output] = field(default_factory=list)
    forwards: list[tuple[str, Input]] = field(default_factory=list)  # (the key that names the partition, input)
    refused: list[tuple[Input, str]] = field(default_factory=list)
    #: ("receipts" | "customer_events" | "commands", type, outcome) and ("closed", "input" | "walk") -> how many
    tally: dict[tuple[str, ...], int] = field(default_factory=dict)

    def count(self, key: tuple[str, ...], n: int = 1) -> None:
        self.tally[key] = self.tally.get(key, 0) + n


@dataclass(slots=True)
class Walk:
    """A close walk: the customers of a partition still to bring up to its frontier."""

    customers: list[str]
    index: int = 0
    closed: int = 0

    @property
    def remaining(self) -> int:
        return len(self.customers) - self.index


def receipt_input(receipt: Receipt, raw: bytes | str | None, origin: Origin | None) -> tuple[str, Input]:
    """Where a receipt goes: its customer's partition, or its card's for one that names only a
    card; returns the key whose partition takes it, and the input."""
    if receipt.customer_id is not None:
        return receipt.customer_id, Input(RECEIPT, receipt, raw, origin)
    assert receipt.card_number is not None  # parse_receipt refuses a receipt with neither
    return card_key(receipt.card_number), Input(CARD_RECEIPT, receipt, raw, origin)


def event_input(event: CustomerEvent, raw: bytes | str | None, origin: Origin | None) -> tuple[str, Input]:
    """Where a customer event goes: a card event to the card's partition, any other to the customer's."""
    if event.type in CARD_EVENTS:
        assert event.card_number is not None  # parse_customer_event requires it
        return card_key(event.card_number), Input(CARD_EVENT, event, raw, origin)
    return event.customer_id, Input(CUSTOMER_EVENT, event, raw, origin)


#: Keys whose partition a processor remembers, at most.
PARTITION_CACHE: Final = 100_000


@dataclass
class Processor:
    """The rules between inputs, for the partitions a driver owns (see the module docstring).

    `take` processes one input of a partition, in order after the ones before it; a
    refusal of the rules (`InvalidInput`) is noted in the outcome. A driver that owns
    every partition (a replay) sets `walk_at_once`: a moved frontier closes the
    partition's customers there and then; the live worker walks a slice at a time
    between its inputs (`walk`), with the same events, because a close's contents do
    not depend on when it is made. A driver implements the storage methods and `forward`.
    """

    config: LoyaltyConfig
    #: The pipeline's partitioner (customer id or card key -> partition of the customers table).
    partitioner: Callable[[str], int]
    partitions: int
    #: Make only what states keep (`apply_receipt`'s `state_only`).
    state_only: bool = False
    #: Render receipt messages only when read (`apply_receipt`'s `lines_when_read`).
    lines_when_read: bool = False
    walk_at_once: bool = False
    #: The driver keeps a receipt store (`stored_receipt`, `keep_receipt`): receipts a state lets
    #: go of within the de-duplication window stay known (`apply_receipt`'s `spill`).
    spill_receipts: bool = False
    frontiers: dict[int, CloseFrontier] = field(default_factory=dict)
    walks: dict[int, Walk] = field(default_factory=dict)
    _thresholds: dict[int, float] = field(default_factory=dict)  # partition -> when its frontier moves next
    _partition_of: dict[str, int] = field(default_factory=dict)

    # --- the driver's: storage and routing ----------------------------------------------------

    def customer(self, customer_id: str) -> CustomerState | None:
        raise NotImplementedError

    def keep(self, customer_id: str, state: CustomerState) -> None:
        """Stores a customer's state (also one changed in place: the driver may have to write it)."""
        raise NotImplementedError

    def card(self, number: str) -> CardState | None:
        raise NotImplementedError

    def keep_card(self, number: str, card: CardState) -> None:
        raise NotImplementedError

    def drop_card(self, number: str) -> None:
        raise NotImplementedError

    def customers_of(self, partition: int) -> list[str]:
        """Every customer of the partition (a walk, a close, a campaign run looks at each)."""
        raise NotImplementedError

    def stored_receipt(self, customer_id: str, receipt_id: str) -> ReceiptRecord | None:
        """A receipt the customer's state let go of, from the receipt store (`spill_receipts`)."""
        raise NotImplementedError

    def keep_receipt(self, customer_id: str, receipt_id: str, record: ReceiptRecord) -> None:
        raise NotImplementedError

    def drop_receipt(self, customer_id: str, receipt_id: str) -> None:
        """A receipt older than the de-duplication window leaves the receipt store."""
        raise NotImplementedError

    def stored_receipt_ids(self, customer_id: str) -> list[str]:
        """Every receipt id the receipt store holds for the customer (an exclusion erases them)."""
        raise NotImplementedError

    def peek(self, customer_id: str) -> CustomerState | bytes | None:
        """The customer as stored, decoded or not: a campaign run skips most without decoding."""
        return self.customer(customer_id)

    def frontier_moved(self, partition: int, frontier: CloseFrontier) -> None:
        """The partition's frontier is now `frontier` (a live driver stores it)."""

    def forward(self, key: str, item: Input, out: Outcome) -> None:
        """An input for the partition that owns `key`, to be taken after the ones it has already."""
        raise NotImplementedError

    # --- inputs -------------------------------------------------------------------------------

    def partition_of(self, key: str) -> int:
        partition = self._partition_of.get(key)
        if partition is None:
            if len(self._partition_of) >= PARTITION_CACHE:
                self._partition_of.clear()  # a cache of the hot keys, not one entry per customer ever seen
            partition = self._partition_of[key] = self.partitioner(key)
        return partition

    def take(self, item: Input, partition: int, out: Outcome) -> None:
        """One input of `partition`; a refusal of the rules is noted in `out.refused`."""
        kind = item.kind
        try:
            if kind == RECEIPT:
                self.receipt(item, out)
            elif kind == CUSTOMER_EVENT:
                self._customer_event(item, out)
            elif kind == CARD_RECEIPT:
                self._card_receipt(item, out)
            elif kind == CARD_EVENT:
                self._card_event(item, out)
            elif kind == SET_STATUS:
                self._set_status(item, out)
            elif kind == MERGE_AWAY:
                self._merge_away(item, out)
            elif kind == MERGE_IN:
                self._merge_in(item, out)
            elif kind == CARD_RELEASE:
                self._release(item.value)
            elif kind == CLOSE_PERIOD:
                self._close_period(partition, item.value, out)
            elif kind == RUN_CAMPAIGNS:
                self.run_campaigns(partition, item.value.day, out)
                out.count(("commands", "run_campaigns", "applied"))
            elif kind == TICK:
                self.tick(partition, item.value, out)
            else:
                raise InvalidInput(f"kind: {kind!r} is not an input of a partition")
        except InvalidInput as exc:
            out.refused.append((item, str(exc)))
            out.count(_REFUSED.get(kind, ("inputs", kind, "dead_letter")))

    def receipt(self, item: Input, out: Outcome) -> None:
        receipt: Receipt = item.value
        customer_id = receipt.customer_id
        if customer_id is None:  # anonymous: a message only, which no state keeps
            out.count(("receipts", receipt.type, "anonymous"))
            if not self.state_only:
                out.outputs += apply_receipt(None, receipt, self.config).outputs
            return
        partition = self.partition_of(customer_id)
        self.arrive(partition, receipt.issued_at, receipt.receipt_id, out)
        state = self.current(customer_id, out, partition)
        if state is not None and state.merged_into is not None:  # a temporary owner merged into a member
            member = state.merged_into
            moved = Input(RECEIPT, receipt._replace(customer_id=member), item.raw, item.origin, True, item.message)
            self.forward(member, moved, out)
            return
        spill = self.spill_receipts
        if spill and state is not None:
            for receipt_id in recall_ids(state, receipt):
                record = self.stored_receipt(customer_id, receipt_id)
                if record is not None and not recall(state, receipt_id, record, self.config):
                    self.drop_receipt(customer_id, receipt_id)
        result: Result = apply_receipt(
            state,
            receipt,
            self.config,
            lines_when_read=self.lines_when_read,
            state_only=self.state_only,
            message=item.message,
            spill=spill,
        )
        if spill and result.state is not None and result.state.spilled:
            for receipt_id, record in result.state.spilled:
                self.keep_receipt(customer_id, receipt_id, record)
            result.state.spilled.clear()
        if result.duplicate:
            out.count(("receipts", receipt.type, "duplicate"))
        else:
            outcome = "history" if result.history_only else "late" if result.late else "counted"
            out.count(("receipts", receipt.type, outcome))
            if result.state is not None:
                self.keep(customer_id, result.state)
        out.outputs += result.outputs
        if state is None:
            self.current(customer_id, out, partition)  # a new customer may start behind the frontier

    def _card_receipt(self, item: Input, out: Outcome) -> None:
        receipt: Receipt = item.value
        assert receipt.card_number is not None
        owner = owner_of(self.card(receipt.card_number))
        if owner is None:  # an unknown or blocked card: an anonymous purchase
            out.count(("receipts", receipt.type, "anonymous"))
            if not self.state_only:
                out.outputs += apply_receipt(None, receipt, self.config).outputs
            return
        moved = Input(RECEIPT, receipt._replace(customer_id=owner), item.raw, item.origin, True, item.message)
        self.forward(owner, moved, out)

    def _customer_event(self, item: Input, out: Outcome) -> None:
        event: CustomerEvent = item.value
        customer_id = event.customer_id
        state = self.current(customer_id, out)
        spilled = state is not None and state.spilled_up_to > 0
        result = apply_customer_event(state, event, self.config)
        out.count(("customer_events", event.type, "duplicate" if result.duplicate else "applied"))
        if not result.duplicate and result.state is not None:
            self.keep(customer_id, result.state)
            if spilled and result.state.spilled_up_to == 0:  # erased: the receipt store forgets them too
                self._erase_stored_receipts(customer_id, result.outputs)
        out.outputs += result.outputs
        if state is None:
            self.current(customer_id, out)
        for number in result.released_cards:  # exclusion: the card records forget the customer too
            self.forward(
                card_key(number), Input(CARD_RELEASE, Release(number, customer_id), None, item.origin, True), out
            )

    def _expire_stored_receipts(self, customer_id: str, state: CustomerState) -> None:
        """Drops the customer's stored receipts that have left its de-duplication window. A close
        walk passes every customer once a period, so a stored receipt outlives the window by at
        most a period even when no receipt ever names it again (a lookup drops it at once)."""
        horizon = (state.latest_issued_at or 0) - self.config.dedupe_seconds
        for receipt_id in self.stored_receipt_ids(customer_id):
            record = self.stored_receipt(customer_id, receipt_id)
            if record is not None and record.issued_at < horizon:
                self.drop_receipt(customer_id, receipt_id)

    def _erase_stored_receipts(self, customer_id: str, outputs: list[Output]) -> None:
        erased = self.stored_receipt_ids(customer_id)
        for receipt_id in erased:
            self.drop_receipt(customer_id, receipt_id)
        for output in outputs:
            if output.kind is _SNAPSHOT and ERASED_RECEIPTS in output.value:
                output.value[ERASED_RECEIPTS] = [*output.value[ERASED_RECEIPTS], *erased]

    def _card_event(self, item: Input, out: Outcome) -> None:
        event: CustomerEvent = item.value
        number = event.card_number
        assert number is not None
        result = apply_card_event(self.card(number), event)
        out.count(("customer_events", event.type, "duplicate" if result.duplicate else "applied"))
        if result.duplicate or result.card is None:
            return
        self.keep_card(number, result.card)
        for step in result.routes:
            if step.kind == "customer_event":
                self.forward(step.customer_id, Input(CUSTOMER_EVENT, event, item.raw, item.origin, True), out)
            else:
                assert step.into is not None
                handover = Handover(event, step.customer_id, step.into)
                self.forward(step.customer_id, Input(MERGE_AWAY, handover, item.raw, item.origin, True), out)

    def _merge_away(self, item: Input, out: Outcome) -> None:
        handover: Handover = item.value
        event = handover.event
        result, donor = merge_away(
            self.current(handover.donor, out),
            handover.donor,
            handover.into,
            event.event_id,
            event.occurred_at,
            self.config,
        )
        if result.duplicate or result.state is None:
            return
        self.keep(handover.donor, result.state)
        out.outputs += result.outputs
        taken = Handover(event, handover.donor, handover.into, donor)
        self.forward(handover.into, Input(MERGE_IN, taken, item.raw, item.origin, True), out)

    def _merge_in(self, item: Input, out: Outcome) -> None:
        handover: Handover = item.value
        assert handover.state is not None
        event = handover.event
        member = self.current(handover.into, out)
        result = merge_into(
            member,
            CustomerState.from_bytes(handover.state),
            handover.into,
            event.event_id,
            event.occurred_at,
            self.config,
        )
        if not result.duplicate and result.state is not None:
            self.keep(handover.into, result.state)
        out.outputs += result.outputs
        if member is None:
            self.current(handover.into, out)

    def _release(self, released: Release) -> None:
        if release(self.card(released.card), released.owner):
            self.drop_card(released.card)

    def _set_status(self, item: Input, out: Outcome) -> None:
        command: SetStatus = item.value
        state = self.current(command.customer_id, out)
        result = set_status(state, command, self.config)
        out.count(("commands", "set_status", "duplicate" if result.duplicate else "applied"))
        if not result.duplicate and result.state is not None:
            self.keep(command.customer_id, result.state)
        out.outputs += result.outputs
        if state is None:
            self.current(command.customer_id, out)

    def _close_period(self, partition: int, command: ClosePeriod, out: Outcome) -> None:
        for customer_id in self.customers_of(partition):
            # Periods the frontier has left behind close by the frontier first, so a close's
            # contents never depend on how far a walk had got when the command came.
            state = self.current(customer_id, out, partition)
            if state is None:
                continue
            result = close_period(state, command, self.config)
            if result.outputs:  # the period advanced: the state changed
                assert result.state is not None
                self.keep(customer_id, result.state)
                out.outputs += result.outputs
        out.count(("commands", "close_period", "applied"))

    def run_campaigns(self, partition: int, day: date, out: Outcome) -> None:
        """The date-triggered campaigns of `day` for the partition's customers (a day run twice
        grants nothing twice: the states remember their grants)."""
        at_risk = self._at_risk_day(day)
        if not (at_risk or any(offer.trigger == "birthday" for offer in self.config.offers)):
            return
        for customer_id in self.customers_of(partition):
            if not at_risk:
                stored = self.peek(customer_id)
                if stored is None or not _has_birth_date(stored):
                    continue
            state = self.current(customer_id, out, partition)
            if state is None:
                continue
            granted = daily_run(state, day, self.config)
            if granted:
                self.keep(customer_id, state)
                out.outputs += granted

    def _at_risk_day(self, day: date) -> bool:
        """Whether `day` is within some system's at-risk days (nobody can get a notice otherwise)."""
        for system in self.config.status_systems:
            if system.at_risk_days is None:
                continue
            noon = datetime(day.year, day.month, day.day, 12, tzinfo=self.config.timezone)
            period = period_containing(noon, PeriodKind(system.period), self.config.timezone)
            if (period.last_day - day).days < system.at_risk_days:
                return True
        return False

    # --- time: the close frontier ---------------------------------------------------------------

    def restore(self, partition: int, frontier: CloseFrontier | None) -> None:
        """Takes a partition with the frontier its store holds; a walk a crash or a rebalance
        interrupted starts again."""
        self.walks.pop(partition, None)
        if frontier is None:
            self.frontiers.pop(partition, None)
            self._thresholds.pop(partition, None)
            return
        self.frontiers[partition] = frontier
        self._thresholds[partition] = next_threshold(frontier, self.config)
        if not frontier.walked:
            self.walks[partition] = Walk(self.customers_of(partition))

    def forget(self, partition: int) -> None:
        """Lets a partition go (another worker owns it now)."""
        self.frontiers.pop(partition, None)
        self._thresholds.pop(partition, None)
        self.walks.pop(partition, None)

    def tick(self, partition: int, at: datetime, out: Outcome) -> None:
        """The wall clock reaches an idle partition: its periods that ended a grace before `at` close."""
        self.observe(partition, at, clock_cause(at.isoformat()), out)

    def arrive(self, partition: int, instant: datetime, cause: str, out: Outcome) -> None:
        """A receipt of the partition's customer, issued at `instant`: the frontier may move."""
        if epoch_of(instant) >= self._thresholds.get(partition, _NEVER):  # most are nowhere near a period's end
            self.observe(partition, instant, cause, out)

    def observe(self, partition: int, instant: datetime, cause: str, out: Outcome) -> None:
        """An input's time on its partition; past the next threshold it moves the frontier and starts a walk."""
        if epoch_of(instant) < self._thresholds.get(partition, _NEVER):
            return
        moved = advanced(self.frontiers.get(partition), instant, cause, self.config)
        if moved is None:
            return
        if partition in self.walks:
            # The walk to the frontier before ends first: a customer it had not reached would
            # otherwise get both closes as one change, caused by this input.
            self.walk(partition, None, out)
        self.frontiers[partition] = moved
        self._thresholds[partition] = next_threshold(moved, self.config)
        self.frontier_moved(partition, moved)
        self.walks[partition] = Walk(self.customers_of(partition))
        if self.walk_at_once:
            self.walk(partition, None, out)

    def walk(self, partition: int, limit: int | None, out: Outcome) -> bool:
        """Brings up to `limit` more customers of the partition up to its frontier (all with None);
        returns whether the walk is done."""
        walk = self.walks.get(partition)
        if walk is None:
            return True
        frontier = self.frontiers[partition]
        customers, periods = walk.customers, frontier.periods
        stop = len(customers) if limit is None else min(len(customers), walk.index + limit)
        while walk.index < stop:
            customer_id = customers[walk.index]
            walk.index += 1
            state = self.customer(customer_id)  # None: gone since the walk began
            if state is None:
                continue
            if is_due(state, periods):
                out.outputs += close_due(state, periods, frontier.cause, self.config).outputs
                self.keep(customer_id, state)
                walk.closed += 1
            if state.spilled_up_to > 0 and self.spill_receipts:
                self._expire_stored_receipts(customer_id, state)
        if walk.index < len(customers):
            return False
        del self.walks[partition]
        out.count(("closed", "walk"), walk.closed)
        walked = CloseFrontier(frontier.periods, frontier.cause, walked=True)
        self.frontiers[partition] = walked
        self.frontier_moved(partition, walked)
        return True

    def current(self, customer_id: str, out: Outcome, partition: int | None = None) -> CustomerState | None:
        """What every input for a customer starts from: its state, with every period its
        partition's frontier has left behind closed (those events made first)."""
        state = self.customer(customer_id)
        if state is None:
            return None
        frontier = self.frontiers.get(self.partition_of(customer_id) if partition is None else partition)
        if frontier is not None and is_due(state, frontier.periods):
            out.outputs += close_due(state, frontier.periods, frontier.cause, self.config).outputs
            self.keep(customer_id, state)
            out.count(("closed", "input"))
        return state


class Encodable(Protocol):
    def to_bytes(self) -> bytes: ...


E = TypeVar("E", bound=Encodable)


class Table(Protocol):
    """Stored values by key, decoded on demand (the live worker's record cache, streams/live.py)."""

    def get(self, key: bytes, decode: Callable[[bytes], E]) -> E | None: ...

    def peek(self, key: bytes) -> Encodable | bytes | None: ...

    def put(self, key: bytes, value: Encodable, partition: int) -> None: ...

    def delete(self, key: bytes, partition: int) -> None: ...

    def stored_keys(self) -> list[bytes]: ...

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]: ...


#: Table keys that are not customers: a card's record, a partition's own.
_RESERVED: Final = tuple(prefix.encode() for prefix in RESERVED_PREFIXES)


@dataclass
class TableProcessor(Processor):
    """The processor over one table that holds every partition's values: customers under their
    id, cards under `card:{number}`, each partition's close frontier under `partition:{n}`,
    each written to the partition its key names. What goes to another partition is left in
    the outcome (`Outcome.forwards`) for the driver to send on."""

    table: Table | None = None

    def _table(self) -> Table:
        assert self.table is not None
        return self.table

    def customer(self, customer_id: str) -> CustomerState | None:
        return self._table().get(customer_id.encode(), CustomerState.from_bytes)

    def keep(self, customer_id: str, state: CustomerState) -> None:
        self._table().put(customer_id.encode(), state, self.partition_of(customer_id))

    def card(self, number: str) -> CardState | None:
        return self._table().get(card_key(number).encode(), CardState.from_bytes)

    def keep_card(self, number: str, card: CardState) -> None:
        key = card_key(number)
        self._table().put(key.encode(), card, self.partition_of(key))

    def drop_card(self, number: str) -> None:
        key = card_key(number)
        self._table().delete(key.encode(), self.partition_of(key))  # a tombstone: recovery deletes it too

    def customers_of(self, partition: int) -> list[str]:
        customers = []
        for key in self._table().stored_keys():
            if key.startswith(_RESERVED):
                continue
            customer_id = key.decode()
            if self.partition_of(customer_id) == partition:
                customers.append(customer_id)
        return customers

    def stored_receipt(self, customer_id: str, receipt_id: str) -> ReceiptRecord | None:
        kept = self._table().get(receipt_key(customer_id, receipt_id).encode(), KeptReceipt.from_bytes)
        return kept.record if kept is not None else None

    def keep_receipt(self, customer_id: str, receipt_id: str, record: ReceiptRecord) -> None:
        key = receipt_key(customer_id, receipt_id).encode()
        self._table().put(key, KeptReceipt(receipt_id, record), self.partition_of(customer_id))

    def drop_receipt(self, customer_id: str, receipt_id: str) -> None:
        self._table().delete(receipt_key(customer_id, receipt_id).encode(), self.partition_of(customer_id))

    def stored_receipt_ids(self, customer_id: str) -> list[str]:
        prefix = receipt_key(customer_id, "").encode()
        return [key[len(prefix) :].decode() for key in self._table().keys_with_prefix(prefix)]

    def peek(self, customer_id: str) -> CustomerState | bytes | None:
        stored = self._table().peek(customer_id.encode())
        if stored is None or isinstance(stored, bytes):
            return stored
        assert isinstance(stored, CustomerState)
        return stored

    def frontier_moved(self, partition: int, frontier: CloseFrontier) -> None:
        self._table().put(partition_key(partition).encode(), frontier, partition)

    def forward(self, key: str, item: Input, out: Outcome) -> None:
        out.forwards.append((key, item))

    def stored_frontier(self, partition: int) -> CloseFrontier | None:
        return self._table().get(partition_key(partition).encode(), CloseFrontier.from_bytes)


#: The tally of a refusal, by the kind of input refused.
_REFUSED: Final = {
    RECEIPT: ("receipts", "unknown", "dead_letter"),
    CARD_RECEIPT: ("receipts", "unknown", "dead_letter"),
    CUSTOMER_EVENT: ("customer_events", "unknown", "dead_letter"),
    CARD_EVENT: ("customer_events", "unknown", "dead_letter"),
    SET_STATUS: ("commands", "set_status", "dead_letter"),
}


def _has_birth_date(stored: CustomerState | bytes) -> bool:
    if isinstance(stored, CustomerState):
        return stored.birth_date is not None
    return CustomerState.stored_with_birth_date(stored)


def without_snapshots(outputs: Iterable[Output]) -> list[Output]:
    """The events but the customer-status snapshots (a replay reads only the final states)."""
    return [o for o in outputs if o.kind is not _SNAPSHOT]
