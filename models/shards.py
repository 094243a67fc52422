"""A replay split by customer: each shard rebuilds its own customers from the whole history.

Customers are independent but for three things every input touches:

- **Cards.** A receipt that carries only a card number belongs to the card's owner
  at that moment, and a card link merges its temporary owner into the member. So a
  shard owns whole components: the customers and cards that card events join
  (`routing`). A component's receipts, events and commands go to one shard.
  Components fall into buckets by a stable hash, and the buckets are dealt out so
  that each shard gets about as many receipts (`balanced`): a few customers make
  most of the receipts (Zipf-distributed activity), so a plain hash leaves the
  shards unevenly loaded.
- **Close frontiers.** A partition's frontier moves at the receipt of any of its
  customers whose time passes the next threshold, and closes every customer of the
  partition (`Processor.arrive`). Components cross partitions, so every shard moves
  every frontier at every receipt, and walks only its own customers.
- **The campaign day.** Each day's campaigns run before the first input that reaches
  the day, whoever it is for.

A survey first notes each receipt's owner and issue time (`survey`). Another
shard's receipt issued before every partition's next threshold and before the next
local day can do nothing, and is skipped unread: most of them. Of the rest, a shard
reads what it needs, its time, customer and id, straight from the record
(`ShardReplayer._guess`). That guess is right unless the owner's replay sees
something a record alone does not show: a receipt it refuses, a card released
since, or a receipt for a customer merged away, which counts for the member and
moves the member's partition too. So each shard also guesses its own receipts
near those edges and compares the guess with what the full replay did (`Signal`).
Where the two differ in anything that could move a frontier or start a day's
campaigns, the round is run again with the owners' signals in place of the
guesses. What a receipt signals depends on its own component's inputs only, never
on a frontier or a campaign, so a guess once replaced stays right; `rebuild` gives
up after `MAX_ROUNDS`. A shard that rebuilt a customer or card it does not own
(`strays`), or frontiers that differ between shards, mean the split did not hold,
and the caller replays in one piece instead.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import zlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from models.cards import CardState, card_key, owner_of, record_card_event
from models.errors import InvalidInput
from models.events import UNMADE
from models.frontier import CloseFrontier
from models.history import RECEIPT_CODE, HistoryRecord, PackedRecords, Replayer, Source, by_fields, packed
from models.inputs import (
    CARD_EVENTS,
    SetStatus,
    ahead_of_clock,
    decode_object,
    parse_command,
    parse_customer_event,
    parse_instant,
)
from models.periods import epoch_of, local_date, local_midnight
from models.processor import Outcome
from models.schema import LoyaltyConfig
from models.state import CustomerState

#: What a receipt tells every shard: the instant it brings the campaigns up to (None when it
#: is refused first), and each (partition, instant, cause) at which it may move a frontier.
Signal = tuple[datetime | None, tuple[tuple[int, datetime, str], ...]]
_NOTHING: Signal = (None, ())
_NEVER = float("-inf")  # the threshold of a partition whose frontier has not moved yet (as models/history)
_LATEST = float("inf")  # the issue time of a receipt that could not be read: never quiet


#: Components hash into this many buckets; the last bucket is for receipts that name no one.
BUCKETS = 256
_NO_ONE = BUCKETS - 1


@dataclass(frozen=True)
class Routing:
    """Which shard owns a customer or a card: its component's bucket's, by a stable hash."""

    shards: int
    roots: dict[str, str]  # each customer id and card key that card events name -> its component's root
    #: The shard of each bucket (`balanced`); by default bucket modulo shards. The no-one bucket is shard 0's.
    table: bytes = b""

    def __post_init__(self) -> None:
        if not self.table:
            object.__setattr__(self, "table", bytes([b % self.shards if b != _NO_ONE else 0 for b in range(BUCKETS)]))

    def bucket(self, key: str | None) -> int:
        if key is None:
            return _NO_ONE  # a receipt naming no one: refused, counted once
        return zlib.crc32(self.roots.get(key, key).encode()) % _NO_ONE

    def shard(self, key: str | None) -> int:
        return self.table[self.bucket(key)]


def balanced(receipts: Sequence[int], shards: int) -> bytes:
    """A bucket-to-shard table that deals the buckets, heaviest first, each to the shard with
    the fewest receipts so far, then the fewest buckets (`receipts`: per bucket). The no-one
    bucket stays shard 0's."""
    loads, table = [(0, 0)] * shards, bytearray(BUCKETS)
    for bucket in sorted(range(_NO_ONE), key=lambda b: (-receipts[b], b)):
        lightest = min(range(shards), key=lambda s: (loads[s], s))
        table[bucket] = lightest
        loads[lightest] = (loads[lightest][0] + receipts[bucket], loads[lightest][1] + 1)
    return bytes(table)


def routing(records: PackedRecords, config: LoyaltyConfig, shards: int) -> Routing:
    """The components that card events make of customers and cards."""
    parent: dict[str, str] = {}
    named: set[str] = set()

    def root(key: str) -> str:
        while (up := parent.get(key, key)) != key:
            parent[key] = parent.get(up, up)  # halve the path
            key = up
        return key

    for index in records.indices(Source.CUSTOMER_EVENTS):
        try:
            event = parse_customer_event(
                records.value(index), config, datetime.fromtimestamp(records.stamps[index], UTC)
            )
        except InvalidInput:
            continue
        if event.type in CARD_EVENTS and event.card_number is not None:
            customer, card = event.customer_id, card_key(event.card_number)
            named.update((customer, card))
            a, b = root(customer), root(card)
            if a != b:
                parent[a] = b
    return Routing(shards, {key: root(key) for key in named})


def receipt_key(data: dict[str, Any]) -> str | None:
    """Who a decoded receipt is for, as far as routing goes: its customer, else its card."""
    customer = data.get("customer_id")
    if type(customer) is str and customer:
        return customer
    card = data.get("card_number")
    if type(card) is str and card:
        return card_key(card)
    return None


class Surveyed(NamedTuple):
    """What `survey` found of a slice of the records, each a flat buffer with one entry a record."""

    buckets: bytes  # the bucket of each receipt's owner
    issued: bytes  # array("d"): when it was issued (epoch seconds), as `Plan.issued`
    keys: bytes  # array("q"), as `Plan.keys`
    ids: bytes  # array("q"), as `Plan.ids`
    left_out: bytes  # as `Plan.left_out`


def survey(records: PackedRecords, routes: Routing, start: int, stop: int, since: float = _NEVER) -> Surveyed:
    """For records[start:stop]: the bucket of each receipt's owner, when it was issued (epoch
    seconds; +inf where unreadable, and for the customer events and commands every shard reads),
    the hashes of whom it names and of its id, and 1 for a receipt issued before `since`. A
    receipt that cannot be read, and every other record, is in the no-one bucket."""
    size = stop - start
    buckets, issued, left_out = bytearray([_NO_ONE]) * size, array("d", bytes(8 * size)), bytearray(size)
    keys, ids = array("q", bytes(8 * size)), array("q", bytes(8 * size))
    codes, roots = records.codes, routes.roots
    bucket_of: dict[str | None, int] = {}  # a customer's receipts recur: its hash worked out once
    for n in range(start, stop):
        when = _LATEST
        if codes[n] == RECEIPT_CODE:
            try:
                data = decode_object(records.value(n))
                key = receipt_key(data)
                bucket = bucket_of.get(key)
                if bucket is None:
                    bucket = bucket_of[key] = routes.bucket(key)
                buckets[n - start] = bucket
                when = parse_instant(data.get("issued_at"), "issued_at").timestamp()
                receipt_id = data.get("receipt_id")
                if when < since:
                    left_out[n - start] = 1  # before the window: not an input at all
                elif key is not None and key not in roots and type(receipt_id) is str:
                    keys[n - start], ids[n - start] = hash(key) or 1, hash(receipt_id)
            except InvalidInput:
                pass  # refused by its owner (shard 0 where unreadable), and never skipped
        issued[n - start] = when
    return Surveyed(bytes(buckets), issued.tobytes(), keys.tobytes(), ids.tobytes(), bytes(left_out))


#: How many receipts more than `replay_memory` a shard makes the messages of, for each customer's
#: latest: a refused one among the latest would otherwise leave an earlier one without its message.
MESSAGE_SLACK = 2


def latest_receipts(plan: Plan, shard: int, memory: int) -> bytearray:
    """Per record, 1 where it is one of the shard's receipts that may come to be among its
    customer's latest `memory`, whose messages a rebuilt state keeps (`apply_receipt`'s
    `message`): the latest `memory` distinct receipt ids that name the customer, and every
    receipt of a customer or card that card events touch (whose receipts may count for another).

    A receipt's first sending counts and its resends do not, and a resend may come last; so
    each id seen from the end is counted once, and its first sending kept with it."""
    owners, keys, ids = plan.owners, plan.keys, plan.ids
    wanted = bytearray(len(owners))
    latest: dict[int, set[int]] = {}
    for index in range(len(owners) - 1, -1, -1):
        if owners[index] != shard:
            continue
        key = keys[index]
        if key == 0:  # not a receipt, refused as read, left out, or of a component card events joined
            wanted[index] = 1
            continue
        seen = latest.get(key)
        if seen is None:
            latest[key] = {ids[index]}
            wanted[index] = 1
        elif len(seen) < memory or ids[index] in seen:
            seen.add(ids[index])
            wanted[index] = 1
    return wanted


@dataclass(frozen=True)
class ShardResult:
    """What a shard rebuilt, as bytes (it may come from another process)."""

    states: list[tuple[str, bytes]]
    cards: list[tuple[str, bytes]]
    frontiers: tuple[tuple[int, bytes], ...]
    refused: int
    mismatches: dict[int, Signal]  # own receipts whose guess was wrong: what they signalled
    effective: bool  # whether a wrong guess could have moved a frontier or started a day
    strays: list[str]  # customers and cards rebuilt here that route to another shard
    remade: bool = False  # replayed a second time with every receipt message made (`replay_shard`)
    #: What `rebuild`'s `settle` made of the shard's customers; `states` is then left empty.
    settled: Any = None

    def __reduce__(self) -> tuple[type[Any], tuple[Any, ...]]:
        return by_fields(self)


@dataclass
class ShardReplayer(Replayer):
    """A `Replayer` that replays the inputs of its own shard in full and hears the others'."""

    shard: int = 0
    routes: Routing = field(default_factory=lambda: Routing(1, {}))
    owners: bytes = b""  # per record, the shard that owns it (`survey`)
    issued: array[float] = field(default_factory=lambda: array("d"))  # per record, its receipt's issued_at
    #: Per record, 1 to make its receipt message (`latest_receipts`); empty: every one.
    wanted: bytes | bytearray = b""
    left_out: bytes = b""  # per record, 1 for a receipt before the window (`Plan.left_out`); empty: none
    #: Receipts whose owners' signals replace the guess (a second round).
    overrides: dict[int, Signal] = field(default_factory=dict)
    mismatches: dict[int, Signal] = field(default_factory=dict)
    effective: bool = False
    #: Card owners as the card events alone make them, for other shards' card-only receipts.
    guessed_cards: dict[str, CardState] = field(default_factory=dict)
    _heard: list[tuple[int, datetime, str]] | None = None  # while an own receipt is fed
    _passed: list[tuple[int, datetime, str]] = field(default_factory=list)
    _heard_when: datetime | None = None
    #: No receipt issued before this instant (epoch seconds) moves a frontier or starts a day.
    _quiet_until: float = _NEVER

    def run(self, records: PackedRecords) -> None:
        codes, stamps, owners, issued, shard = records.codes, records.stamps, self.owners, self.issued, self.shard
        wanted = self.wanted or b"\x01" * len(codes)
        left_out = self.left_out or bytes(len(codes))
        for index in range(len(codes)):
            if codes[index] == RECEIPT_CODE:
                if left_out[index]:
                    continue
                quiet = issued[index] < self._quiet_until  # nothing this receipt could signal would do anything
                if quiet and owners[index] != shard:
                    continue  # most of other shards' receipts: not even made
                self._receipt_input(index, records.value(index), stamps[index], quiet, wanted[index] == 1)
            elif records.source(index) is Source.CUSTOMER_EVENTS:
                self._event_input(records[index])
            else:
                self._command_input(records[index])

    def unmade_kept(self) -> int:
        """How many receipts a rebuilt state keeps the message of that was not made: `wanted`
        left out one that came to be among its customer's latest."""
        return sum(r.message_event is UNMADE for state in self.states.values() for r in state.receipts.values())

    def result(self, settle: Settle | None = None) -> ShardResult:
        """What the shard rebuilt, as bytes; with `settle`, its customers as `settle` makes them."""
        strays = [c for c in self.states if self.routes.shard(c) != self.shard]
        strays += [card_key(n) for n in self.cards if self.routes.shard(card_key(n)) != self.shard]
        settled = settle(self) if settle is not None else None
        return ShardResult(
            states=[(c, s.to_bytes()) for c, s in self.states.items()] if settle is None else [],
            cards=[(n, card.to_bytes()) for n, card in self.cards.items()],
            frontiers=tuple((p, f.to_bytes()) for p, f in sorted(self.frontiers.items())),
            refused=self.refused,
            mismatches=self.mismatches,
            effective=self.effective,
            strays=strays,
            settled=settled,
        )

    # --- receipts -------------------------------------------------------------------------

    def _receipt_input(self, index: int, value: bytes, arrived: float, quiet: bool, message: bool) -> None:
        if self.owners[index] != self.shard:  # another shard's, near a day's or a period's end
            signal = self.overrides.get(index)
            if signal is None:
                try:
                    signal = self._guess(decode_object(value), arrived)
                except InvalidInput:
                    return
            when, arrivals = signal
            out = Outcome()
            if when is not None:
                self._campaigns_until(when, out)
            for partition, instant, cause in arrivals:
                self.arrive(partition, instant, cause, out)
            return
        try:
            data = decode_object(value)
        except InvalidInput:
            self.refused += 1  # refused before anything else, as the worker does
            return
        if quiet:
            self._own_receipt(data, value, arrived, message)
            return
        # Near a day's or a period's end: what the others guess of this receipt must be right.
        signal = self.overrides.get(index)
        if signal is None:
            signal = self._guess(data, arrived)
        day_before = self._campaign_day
        guessed = (self._campaign_step(signal[0], day_before), self._would_pass(signal[1]))
        self._listen()
        self._own_receipt(data, value, arrived, message)
        heard = self._heard_signal()
        if heard != signal:
            self.mismatches[index] = heard
            if (self._campaign_step(heard[0], day_before), tuple(self._passed)) != guessed:
                self.effective = True

    def _own_receipt(self, data: dict[str, Any], value: bytes, arrived: float, message: bool) -> None:
        out = Outcome()
        try:
            self._take_receipt(data, value, arrived, out, message)
        except InvalidInput:
            self.refused += 1
        self.refused += len(out.refused)

    # Set and read through methods, not inline: a compiled build (models/compiled.py) trusts
    # the type an attribute was narrowed to in a function, and `_take_receipt` changes these.
    def _listen(self) -> None:
        """From now, note what the receipt being fed signals (`_campaigns_until`, `arrive`)."""
        self._heard, self._passed, self._heard_when = [], [], None

    def _heard_signal(self) -> Signal:
        """What the receipt fed since `_listen` signalled; stops listening."""
        heard = self._heard
        assert heard is not None
        self._heard = None
        return (self._heard_when, tuple(heard))

    def _guess(self, data: dict[str, Any], arrived: float) -> Signal:
        """What a receipt that arrived then (epoch seconds) signals, read from its record alone."""
        try:
            when = parse_instant(data.get("issued_at"), "issued_at")
        except InvalidInput:
            return _NOTHING
        if ahead_of_clock(when, arrived, self.config):
            return _NOTHING  # refused: too far ahead of the clock, as its owner judges it
        customer = data.get("customer_id")
        if not (type(customer) is str and customer):
            card = data.get("card_number")
            customer = owner_of(self.guessed_cards.get(card)) if type(card) is str and card else None
        cause = data.get("receipt_id")
        if customer is None or type(cause) is not str:
            return (when, ())
        return (when, ((self.partition_of(customer), when, cause),))

    def _campaign_step(self, when: datetime | None, day_before: date | None) -> date | None:
        """The day whose campaigns an input at `when` would start (None: none)."""
        if when is None or not self.campaigns:
            return None
        day = local_date(when, self.config.timezone)
        return day if day_before is None or day > day_before else None

    def _would_pass(self, arrivals: tuple[tuple[int, datetime, str], ...]) -> tuple[tuple[int, datetime, str], ...]:
        return tuple(a for a in arrivals if a[1].timestamp() >= self._thresholds.get(a[0], _NEVER))

    def _campaigns_until(self, instant: datetime, out: Outcome) -> None:
        if self._heard is not None:
            self._heard_when = instant
        day = self._campaign_day
        super()._campaigns_until(instant, out)
        if self._campaign_day != day:
            self._quiet_until = self._quiet()

    def observe(self, partition: int, instant: datetime, cause: str, out: Outcome) -> None:
        super().observe(partition, instant, cause, out)
        self._quiet_until = self._quiet()

    def _quiet(self) -> float:
        """Until when nothing moves: every partition's next threshold, and the next day's start."""
        if len(self._thresholds) < self.partitions:
            return _NEVER  # a partition's first receipt sets its frontier
        until = min(self._thresholds.values())
        if self.campaigns:
            if self._campaign_day is None:
                return _NEVER
            next_day = local_midnight(self._campaign_day + timedelta(days=1), self.config.timezone)
            until = min(until, next_day.timestamp())
        return until

    def arrive(self, partition: int, instant: datetime, cause: str, out: Outcome) -> None:
        if self._heard is not None:
            self._heard.append((partition, instant, cause))
            if epoch_of(instant) >= self._thresholds.get(partition, _NEVER):
                self._passed.append((partition, instant, cause))
        super().arrive(partition, instant, cause, out)

    # --- customer events and commands (few: parsed by every shard) --------------------------

    def _event_input(self, record: HistoryRecord) -> None:
        try:
            event = parse_customer_event(record.value, self.config, datetime.fromtimestamp(record.timestamp, UTC))
        except InvalidInput:
            if self.shard == 0:
                self.refused += 1
            return
        if event.type in CARD_EVENTS and event.card_number is not None:
            with contextlib.suppress(InvalidInput):  # refused by its owner's shard too
                record_card_event(self.guessed_cards, event)
        if self.routes.shard(event.customer_id) == self.shard:
            self.feed(record)
        else:
            self._campaigns_until(event.occurred_at, Outcome())

    def _command_input(self, record: HistoryRecord) -> None:
        now = datetime.fromtimestamp(record.timestamp, UTC)
        try:
            command = parse_command(record.value, self.config, now)
        except InvalidInput:
            if self.shard == 0:
                self.refused += 1
            return
        if not isinstance(command, SetStatus):  # a close or a campaign run: every shard, for its own
            refused = self.refused
            self.feed(record)
            if self.shard != 0:
                self.refused = refused
        elif self.routes.shard(command.customer_id) == self.shard:
            self.feed(record)
        else:
            self._campaigns_until(now, Outcome())


def replay_shard(
    config: LoyaltyConfig,
    records: PackedRecords,
    partitioner: Callable[[str], int],
    partitions: int,
    plan: Plan,
    shard: int,
    overrides: dict[int, Signal],
    until: datetime | None = None,
    settle: Settle | None = None,
) -> ShardResult:
    """The shard's customers rebuilt, the receipt messages made only for each one's latest
    receipts (`latest_receipts`); where that left a kept one unmade, the shard is replayed
    again with every message made (`ShardResult.remade`). `settle` as `rebuild`'s."""

    def replayed(wanted: bytes | bytearray) -> ShardReplayer:
        replayer = ShardReplayer(
            config,
            partitioner,
            partitions,
            shard=shard,
            routes=plan.routes,
            owners=plan.owners,
            issued=plan.issued,
            wanted=wanted,
            left_out=plan.left_out,
            overrides=overrides,
            state_only=True,  # a shard sends back its states, nothing else
        )
        replayer.run(records)
        if until is not None:
            replayer.finish(until)
        return replayer

    replayer = replayed(latest_receipts(plan, shard, config.replay_memory + MESSAGE_SLACK))
    if not replayer.unmade_kept():
        return replayer.result(settle)
    return dataclasses.replace(replayed(b"").result(settle), remade=True)  # every message made


@dataclass(frozen=True)
class Plan:
    """Who owns what, and when each receipt was issued: what every shard reads first."""

    routes: Routing
    owners: bytes
    issued: array[float]
    #: Per record, a hash of the customer or card a receipt names, and of its receipt id; 0 where
    #: not a receipt, refused as read, left out, or of a component card events joined (`latest_receipts`).
    keys: array[int] = field(default_factory=lambda: array("q"))
    ids: array[int] = field(default_factory=lambda: array("q"))
    #: Per record, 1 for a receipt issued before the replay's window: no shard reads it.
    left_out: bytes = b""


def planned(
    records: PackedRecords,
    config: LoyaltyConfig,
    shards: int,
    parallel: Parallel[Any],
    since: datetime | None = None,
) -> Plan:
    """The components, then every receipt surveyed (a slice per shard, run by `parallel`), and
    the buckets dealt out to the shards by how many receipts each holds. With `since`, the
    receipts issued before it are left out, as streams/history.within leaves them out."""
    routes = routing(records, config, shards)
    cuts = [len(records) * k // shards for k in range(shards + 1)]
    start = since.timestamp() if since is not None else _NEVER
    surveyed: list[Surveyed] = parallel(
        [functools.partial(survey, records, routes, a, b, start) for a, b in itertools.pairwise(cuts)]
    )
    issued, keys, ids = array("d"), array("q"), array("q")
    for part in surveyed:
        issued.frombytes(part.issued)
        keys.frombytes(part.keys)
        ids.frombytes(part.ids)
    buckets = b"".join([part.buckets for part in surveyed])
    counts = collections.Counter(buckets)  # one pass, not a bytes.count per bucket
    table = balanced([counts[b] for b in range(BUCKETS)], shards)
    left_out = b"".join([part.left_out for part in surveyed])
    return Plan(dataclasses.replace(routes, table=table), buckets.translate(table), issued, keys, ids, left_out)


T = TypeVar("T")
#: What a caller makes of a shard's customers in the shard's own process, once they are rebuilt
#: (`rebuild`): `loyalty replay` encodes them there, and the events that announce them.
Settle = Callable[[Replayer], Any]
#: Runs the tasks (each in a process of its own, or one after the other) and returns what each returned.
Parallel = Callable[[Sequence[Callable[[], T]]], list[T]]


class SplitFailed(Exception):
    """The shards did not add up to a replay in one piece; replay it in one piece."""


#: A round after the first runs only where a guess mattered: rarely one, at most two more.
MAX_ROUNDS = 3


def rebuild(
    config: LoyaltyConfig,
    records: Sequence[HistoryRecord],
    partitioner: Callable[[str], int],
    partitions: int,
    shards: int,
    parallel: Parallel[Any],
    until: datetime | None = None,
    since: datetime | None = None,
    settle: Settle | None = None,
) -> tuple[Replayer, int, list[Any]]:
    """The replay of `records` in `shards` shards, run by `parallel`; `until` as `Replayer.finish`.
    With `since`, receipts issued before it are left out (as streams/history.within), found by
    the survey, which reads every receipt anyway. Returns the replayer the shards add up to,
    how many rounds it took, and what `settle` made of each shard's customers: with `settle`,
    the replayer holds no customers, only their cards and the frontiers. A round that has to
    be run again runs `settle` again too (the work of the first is lost: rarely, it is the
    last step of a shard)."""
    records = packed(records)  # what the shards read of it, they read without copying its pages
    plan = planned(records, config, shards, parallel, since)
    overrides: dict[int, Signal] = {}
    for rounds in range(1, MAX_ROUNDS + 1):
        tasks = [
            functools.partial(
                replay_shard, config, records, partitioner, partitions, plan, shard, overrides, until, settle
            )
            for shard in range(shards)
        ]
        results: list[ShardResult] = parallel(tasks)
        strays = [key for r in results for key in r.strays]
        if strays:
            raise SplitFailed(f"{len(strays)} customers or cards rebuilt outside their shard, e.g. {strays[0]!r}")
        if not any(r.effective for r in results):
            inputs = len(records) - plan.left_out.count(1)
            settled = [r.settled for r in results] if settle is not None else []
            return combine(config, partitioner, partitions, results, inputs), rounds, settled
        # Every wrong guess so far, replaced by what its owner saw.
        overrides = overrides | {index: signal for r in results for index, signal in r.mismatches.items()}
    raise SplitFailed(f"after {MAX_ROUNDS} rounds a receipt's guess still mattered")


def combine(
    config: LoyaltyConfig,
    partitioner: Callable[[str], int],
    partitions: int,
    results: Sequence[ShardResult],
    inputs: int,
) -> Replayer:
    """One replayer holding every shard's customers and cards, and the frontiers they all moved alike."""
    if len({r.frontiers for r in results}) != 1:
        raise SplitFailed("the shards' close frontiers differ")
    replayer = Replayer(config, partitioner, partitions, inputs=inputs, refused=sum(r.refused for r in results))
    for result in results:
        for customer_id, raw in result.states:
            replayer.keep(customer_id, CustomerState.from_bytes(raw))
        replayer.cards.update((n, CardState.from_bytes(raw)) for n, raw in result.cards)
    for partition, raw in results[0].frontiers:
        replayer.restore(partition, CloseFrontier.from_bytes(raw))
    return replayer
