"""The loyalty rules as functions: `(state, input, config) -> (state, events)`.

The Faust agents call these for every input, and so will the what-if and replay
commands: the same input and state always give the same events, ids included.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from itertools import islice
from typing import Any

from models import events
from models.errors import InvalidInput
from models.events import Output
from models.inputs import ZERO, ClosePeriod, CustomerEvent, Receipt, SetStatus
from models.levels import direction, level_after_close
from models.messages import (
    ChangeNote,
    anonymous_lines,
    closed_counter_value,
    counter_value,
    format_counter,
    purchase_lines,
)
from models.periods import (
    Period,
    PeriodKind,
    epoch_of,
    local_date,
    local_midnight,
    parse_period,
    period_containing,
    period_of_day,
)
from models.schema import ClientState, LoyaltyConfig, Offer, StatusSystem
from models.state import OUTSIDE_PROGRAMME, CustomerState, ReceiptRecord, SystemState, iso
from models.views import status_view

CENT = Decimal("0.01")
#: A customer idle for longer than this many periods is closed in one step, not one event per period.
MAX_PERIODS_TO_WALK = 240
# Read once: an enum member looked up on its class costs about 70 ns on Python 3.11, per output here.
_RECEIPT_MESSAGE = events.OutputKind.RECEIPT_MESSAGE
#: How many of a customer's latest command ids are remembered, so a resent command applies once.
COMMAND_MEMORY = 20


@dataclass(slots=True)
class Result:
    state: CustomerState | None
    outputs: list[Output]
    duplicate: bool
    late: bool  # for a period the customer has closed
    history_only: bool  # older than the last closed period: remembered, changes no counter
    released_cards: list[str]  # cards whose records must forget this customer
    instant: tuple[tuple[str, str], ...]  # a sale's (system, level) in instant rules: `ReceiptRecord.instant`

    # Written out rather than made by @dataclass, which keeps it (the defaults are its alone).
    # Compiled (models/compiled.py), the one it makes runs as Python, at twice the cost of
    # this one, on every receipt.
    def __init__(
        self,
        state: CustomerState | None,
        outputs: list[Output] | None = None,
        duplicate: bool = False,
        late: bool = False,
        history_only: bool = False,
        released_cards: list[str] | None = None,
        instant: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.state = state
        self.outputs = outputs if outputs is not None else []
        self.duplicate = duplicate
        self.late = late
        self.history_only = history_only
        self.released_cards = released_cards if released_cards is not None else []
        self.instant = instant


@lru_cache(maxsize=4096)
def _period(kind: PeriodKind, period_id: str) -> Period:
    return parse_period(kind, period_id)


def new_customer(customer_id: str) -> CustomerState:
    # A customer known to the POS by id is a member; the lifecycle events refine this.
    return CustomerState(customer_id=customer_id, client_state=ClientState.REGISTERED)


def apply_receipt(
    state: CustomerState | None,
    receipt: Receipt,
    config: LoyaltyConfig,
    *,
    lines_when_read: bool = False,
    state_only: bool = False,
    message: bool = True,
    spill: bool = False,
) -> Result:
    """Counts a receipt for its customer and returns the events it causes.

    With `spill`, the driver keeps a receipt store: the receipts the state lets go of
    within the de-duplication window (beyond `receipt_memory`) are left in
    `state.spilled` for it to keep, and are not forgotten; the driver puts one back in
    `receipts` (`recall`) before a receipt that names it is applied. Without it, they are
    forgotten, and a receipt no later than the newest forgotten one is refused.

    With `state_only`, only what the state keeps is made: the status changes (a receipt
    message notes them) and the receipt message (the state remembers it for a resend), but
    no offer triggers and no snapshot. The state comes out the same. `loyalty replay`
    keeps nothing else of a month replayed, so it makes no offers it would throw away.

    With `lines_when_read`, the receipt message's lines are rendered only if its value is
    read: from a copy of what they show, taken now. A replay reads only the messages its
    rebuilt states keep for their latest few receipts; the live pipeline reads every one
    at once, and copying first would only add to its cost.

    Without `message`, the receipt message is not made at all: the state remembers
    `events.UNMADE` in its place, which raises if read. A split replay passes it for the
    receipts it knows will not be among their customer's latest `replay_memory`, the only
    ones whose message a rebuilt state keeps (models/shards.py); it checks that none was kept.

    A receipt whose id the customer already has is a resend: the state is left as
    it is, and for the customer's latest `replay_memory` receipts the receipt
    message of the first time is returned again, so a till that retried still
    prints it. The other events of the first time are not repeated: a state that
    remembers the receipt is only ever stored once they were delivered.
    """
    if receipt.customer_id is None or (state is not None and state.client_state in OUTSIDE_PROGRAMME):
        # Anonymous, or left the programme (or merged away): the purchase counts for no one, and
        # its message is kept by no state.
        return Result(state, [] if state_only else [_anonymous_message(receipt, config)])
    if state is None:
        state = new_customer(receipt.customer_id)
    known = state.receipts.get(receipt.receipt_id)
    if known is not None:
        # The very event of the first time (its key is the till, its value made when read): a
        # replay that only rebuilds states reads none, and a month holds tens of thousands of resends.
        first = known.message_event
        replay = [resent(first, config)] if first is not None else []
        # The latest snapshot again, identical to when it was first sent: a crash may
        # have lost it, and sinks keep whichever version is newest anyway.
        if not state_only:
            replay.append(_snapshot(state, config))
        return Result(state, replay, duplicate=True)
    epoch = epoch_of(receipt.issued_at)  # once here: the de-duplication and the record read it
    issued = int(epoch)  # records keep whole seconds
    if _beyond_dedupe(state, epoch, config):
        raise InvalidInput(
            f"issued_at: {receipt.issued_at.isoformat()} is older than the {config.dedupe_window.days}-day "
            "de-duplication window of this customer's receipts, so it cannot be counted safely"
        )
    if receipt.type == "return":
        result = _apply_return(state, receipt, config, lines_when_read, message)
    else:
        result = _apply_sale(state, receipt, config, lines_when_read, message, offers=not state_only)
        if state.latest_issued_at is None or issued > state.latest_issued_at:
            state.latest_issued_at = issued
    _remember(state, receipt, issued, result.outputs, config, instant=result.instant, spill=spill)
    _changed(state, receipt.receipt_id, receipt.issued_at)
    if not state_only:
        result.outputs.append(_snapshot(state, config))
    return result


def _apply_sale(
    state: CustomerState,
    receipt: Receipt,
    config: LoyaltyConfig,
    lines_when_read: bool,
    message: bool,
    *,
    offers: bool,
) -> Result:
    outputs: list[Output] = []
    changes = _news(state)
    levels_before: dict[str, str] = {}
    late = history_only = False
    instant: tuple[tuple[str, str], ...] = ()
    # The receipt's local day, once for every system's period and days of purchase: each
    # asked it again (and the configuration's zone) for each system.
    day = local_date(receipt.issued_at, config.timezone)
    ordinal = day.toordinal()
    for system in config.status_systems:
        sys_state = _system_state(state, system, receipt.issued_at, receipt.receipt_id, config, outputs, changes)
        period = period_of_day(system.period, day)
        # Each call below is guarded by the test it would start with: nearly every receipt falls
        # in the open period, under no manual status, and most systems have no instant rules.
        if sys_state.period != period.id:
            _advance(state.customer_id, sys_state, system, period, receipt.receipt_id, config, outputs, changes)
        if period.id == sys_state.period and sys_state.valid_until is not None:
            _expire_manual(state.customer_id, sys_state, system, receipt.issued_at, receipt.receipt_id, config, outputs)
        levels_before[system.id] = sys_state.level
        if period.id != sys_state.period:
            late = True
            if sys_state.closed_period == period.id:
                sys_state.closed_amount += receipt.total
                sys_state.closed_count += 1
                _add_day(sys_state.closed_days, ordinal)
                _correct_closed(
                    state.customer_id,
                    sys_state,
                    system,
                    receipt.receipt_id,
                    receipt.issued_at,
                    config,
                    outputs,
                    changes,
                )
            else:
                history_only = True
            continue
        sys_state.amount += receipt.total
        sys_state.count += 1
        _add_day(sys_state.days, ordinal)
        if system.instant_upgrades:
            stands = _instant_upgrade(state.customer_id, sys_state, system, receipt, config, outputs, changes)
            if stands is not None:
                instant += ((system.id, stands),)
    if not late:
        if offers:
            outputs.extend(_purchase_offers(state, receipt, levels_before, config))
        for sys_state in state.systems.values():
            sys_state.peak_count = max(sys_state.peak_count, sys_state.count)
    outputs.append(_message(state, receipt, changes, config, lines_when_read) if message else events.UNMADE)
    return Result(state, outputs, late=late, history_only=history_only, instant=instant)


def _apply_return(
    state: CustomerState, receipt: Receipt, config: LoyaltyConfig, lines_when_read: bool, message: bool
) -> Result:
    assert receipt.original_receipt_id is not None
    original = state.receipts.get(receipt.original_receipt_id)
    if original is None:
        raise InvalidInput(
            f"original_receipt_id: {receipt.original_receipt_id!r} is not a counted receipt of this customer"
        )
    if original.returned + receipt.total > original.total:
        raise InvalidInput(
            f"total: returning {receipt.total} would exceed the {original.total - original.returned} "
            f"left of {receipt.original_receipt_id!r}"
        )
    original.returned += receipt.total
    full = original.returned == original.total
    outputs: list[Output] = []
    changes = _news(state)
    for system in config.status_systems:
        sys_state = state.systems.get(system.id)
        if sys_state is None:
            continue
        period = period_containing(receipt.issued_at, system.period, config.timezone)
        _advance(state.customer_id, sys_state, system, period, receipt.receipt_id, config, outputs, changes)
        # The period that counted the original while it is open; once it has closed, the
        # current one (its level was decided and is not re-opened by a return). Not floored at
        # zero: a return that comes before the period's sales is a debit those sales make up, so
        # the counters the close decides by are the same in whatever order the receipts arrive.
        sys_state.amount -= receipt.total
        if full:
            sys_state.count -= 1
            if original.instant:
                _withdraw_instant(state.customer_id, sys_state, system, original, receipt, config, outputs, changes)
    outputs.append(_message(state, receipt, changes, config, lines_when_read) if message else events.UNMADE)
    return Result(state, outputs)


MANUAL_REASONS = ("manual", "batch")
#: Which client states each customer event may start from (None: the customer is not known yet).
_ALLOWED_FROM: dict[str, tuple[ClientState | None, ...]] = {
    "anonymous_registered": (None, ClientState.ANONYMOUS),
    "registered": (None, ClientState.ANONYMOUS, ClientState.NEW, ClientState.REGISTERED),
    "profile_updated": (ClientState.ANONYMOUS, ClientState.NEW, ClientState.REGISTERED),
    "friend_invited": (ClientState.ANONYMOUS, ClientState.NEW, ClientState.REGISTERED),
    "excluded": (None, ClientState.ANONYMOUS, ClientState.NEW, ClientState.REGISTERED, ClientState.EXCLUDED),
    "card_issued": (None, ClientState.ANONYMOUS, ClientState.NEW, ClientState.REGISTERED),
    "card_linked": (None, ClientState.ANONYMOUS, ClientState.NEW, ClientState.REGISTERED),
}


def _add_day(days: list[int], day: int) -> None:
    """Notes a day of purchase (its ordinal), keeping the days ascending and distinct."""
    if not days or day > days[-1]:  # receipts come in time order: a later day, or the same one
        days.append(day)
    elif day != days[-1] and day not in days:
        bisect.insort(days, day)


def apply_customer_event(state: CustomerState | None, event: CustomerEvent, config: LoyaltyConfig) -> Result:
    """Moves the customer through the client states, keeps the profile, and counts invitations.

    A transition the lifecycle does not allow (a Deleted or Excluded customer coming back, an
    anonymous registration of a member) raises `InvalidInput`, which dead-letters the event.
    Card events are routed by card number and handled elsewhere.
    """
    if state is not None and event.event_id in state.commands:
        return Result(state, [_snapshot(state, config)], duplicate=True)
    allowed = _ALLOWED_FROM.get(event.type)
    if allowed is None:
        raise InvalidInput(f"type: {event.type} is not handled per customer")
    current = state.client_state if state is not None else None
    if current not in allowed:
        starts = ", ".join(s.value if s is not None else "unknown" for s in allowed)
        raise InvalidInput(
            f"type: {event.type} is not allowed for a customer who is "
            f"{current.value if current is not None else 'unknown'} (allowed from: {starts})"
        )
    if state is None:
        state = CustomerState(customer_id=event.customer_id, client_state=ClientState.REGISTERED)
    outputs: list[Output] = []
    at = event.occurred_at
    erased: list[str] = []
    released = list(state.cards) if event.type == "excluded" else []
    if event.type == "excluded":
        erased = _erase(state)
    else:
        if event.type == "card_issued" and current is None:
            state.client_state = ClientState.NEW
        if event.type in ("card_issued", "card_linked") and event.card_number not in state.cards:
            assert event.card_number is not None
            state.cards.append(event.card_number)
        if event.type == "anonymous_registered":
            state.client_state = ClientState.ANONYMOUS
        elif event.type == "registered":
            state.client_state = ClientState.REGISTERED
            state.registered_at = state.registered_at or at.isoformat()
        if event.birth_date is not None:
            state.birth_date = event.birth_date.isoformat()
        for system in config.status_systems:
            sys_state = _system_state(state, system, at, event.event_id, config, outputs, [])
            if event.type != "friend_invited":
                continue
            period = period_containing(at, system.period, config.timezone)
            _advance(state.customer_id, sys_state, system, period, event.event_id, config, outputs, [])
            if period.id == sys_state.period:
                sys_state.friends += 1
            elif sys_state.closed_period == period.id:
                sys_state.closed_friends += 1
                _correct_closed(state.customer_id, sys_state, system, event.event_id, at, config, outputs, [])
    state.commands = [*state.commands[-(COMMAND_MEMORY - 1) :], event.event_id]
    _changed(state, event.event_id, at)
    snapshot = _snapshot(state, config)
    if erased:
        snapshot.value[events.ERASED_RECEIPTS] = erased  # so the sinks can drop what they keep per receipt
    outputs.append(snapshot)
    return Result(state, outputs, released_cards=released)


def merge_away(
    state: CustomerState | None, customer_id: str, into: str, cause: str, at: datetime, config: LoyaltyConfig
) -> tuple[Result, bytes]:
    """The temporary owner of a linked card becomes Deleted; returns its state as it was, for the member."""
    if state is None:
        state = CustomerState(customer_id=customer_id, client_state=ClientState.NEW)
    if state.client_state is ClientState.DELETED:
        return Result(state, [_snapshot(state, config)], duplicate=True), b""
    donor = state.to_bytes()
    state.client_state, state.merged_into = ClientState.DELETED, into
    state.cards = []
    _changed(state, cause, at)
    return Result(state, [_snapshot(state, config)]), donor


def merge_into(
    state: CustomerState | None, donor: CustomerState, member_id: str, cause: str, at: datetime, config: LoyaltyConfig
) -> Result:
    """Adds a temporary owner's counters and receipt history to the member. Counters of the
    same open period add up; those of the member's last closed period correct that close
    (a `merge` status change when the level changes); older ones are history."""
    if state is None:
        state = CustomerState(customer_id=member_id)
    if f"merge:{donor.customer_id}" in state.commands:
        return Result(state, [_snapshot(state, config)], duplicate=True)
    outputs: list[Output] = []
    for system in config.status_systems:
        theirs = donor.systems.get(system.id)
        if theirs is None:
            continue
        ours = _system_state(state, system, at, cause, config, outputs, [])
        their_period = _period(system.period, theirs.period)
        if their_period > _period(system.period, ours.period):
            _advance(state.customer_id, ours, system, their_period, cause, config, outputs, [])
        if theirs.period == ours.period:
            ours.amount += theirs.amount
            ours.count += theirs.count
            ours.peak_count += theirs.peak_count
            ours.friends += theirs.friends
            ours.days = sorted(set(ours.days) | set(theirs.days))
            # Their receipts come too (below): a return of one of them withdraws what it stood for here.
            for level, sales in theirs.instant_sales.items():
                ours.instant_sales[level] = ours.instant_sales.get(level, 0) + sales
        for period_id, amount, count, friends, days in (
            (theirs.period, theirs.amount, theirs.count, theirs.friends, theirs.days),
            (
                theirs.closed_period,
                theirs.closed_amount,
                theirs.closed_count,
                theirs.closed_friends,
                theirs.closed_days,
            ),
        ):
            if period_id is not None and period_id == ours.closed_period:
                ours.closed_amount += amount
                ours.closed_count += count
                ours.closed_friends += friends
                ours.closed_days = sorted(set(ours.closed_days) | set(days))
                _correct_closed(state.customer_id, ours, system, cause, at, config, outputs, [], reason="merge")
    for receipt_id, record in donor.receipts.items():
        state.receipts.setdefault(receipt_id, record)
    if donor.spilled_up_to > state.forgotten_before:
        # The donor's receipt store is kept under its own id: what it holds is forgotten here.
        state.forgotten_before = donor.spilled_up_to
    if donor.latest_issued_at is not None:
        state.latest_issued_at = max(state.latest_issued_at or 0, donor.latest_issued_at)
    state.commands = [*state.commands[-(COMMAND_MEMORY - 1) :], f"merge:{donor.customer_id}"]
    _changed(state, cause, at)
    outputs.append(_snapshot(state, config))
    return Result(state, outputs)


def _erase(state: CustomerState) -> list[str]:
    """Exclusion: the personal data goes; what stays is the customer id with its statuses and
    counters (anonymous aggregates), so the programme's figures do not change retroactively."""
    state.client_state = ClientState.EXCLUDED
    state.birth_date = None
    state.registered_at = None
    state.cards = []
    erased = list(state.receipts)
    state.spilled_up_to = 0  # the driver erases the receipt store's (models/processor.py)
    state.receipts.clear()  # receipt ids name the POS that issued them
    return erased


def _manual_holds(sys_state: SystemState, at: datetime) -> bool:
    return (
        sys_state.reason in MANUAL_REASONS
        and sys_state.valid_until is not None
        and datetime.fromisoformat(sys_state.valid_until) > at
    )


def set_status(state: CustomerState | None, command: SetStatus, config: LoyaltyConfig) -> Result:
    """A manual or batch status: it holds until the end of `valid_until` (local day) or, without one,
    until the current period ends; then the normal rules decide again."""
    if state is None:
        state = new_customer(command.customer_id)
    if command.command_id in state.commands:
        return Result(state, [_snapshot(state, config)], duplicate=True)
    if state.client_state in OUTSIDE_PROGRAMME:
        raise InvalidInput(f"customer_id: {command.customer_id} is {state.client_state.value}; no status can be set")
    system = config.system(command.status_system)
    at = command.requested_at
    period = period_containing(at, system.period, config.timezone)
    outputs: list[Output] = []
    sys_state = state.systems.get(system.id)
    if sys_state is None:
        first = system.levels[0].id
        sys_state = state.systems[system.id] = SystemState(level=first, base_level=first, period=period.id)
        previous: str | None = None
    else:
        _advance(state.customer_id, sys_state, system, period, command.command_id, config, outputs, [])
        _expire_manual(state.customer_id, sys_state, system, at, command.command_id, config, outputs)
        previous = sys_state.level
    if command.valid_until is not None:
        until = local_midnight(command.valid_until + timedelta(days=1), config.timezone)
    else:
        until = _period(system.period, sys_state.period).ends_at(config.timezone)
    sys_state.level, sys_state.reason, sys_state.valid_until = command.status, command.source, until.isoformat()
    outputs.append(
        _status_change(
            state.customer_id,
            system,
            sys_state,
            previous,
            change="assign" if previous in (None, command.status) else direction(system, previous, command.status),
            reason=command.source,
            effective_from=at,
            caused_by=command.command_id,
            id_parts=(command.source, command.command_id),
            operator=command.operator,
            comment=command.reason,
        )
    )
    state.commands = [*state.commands[-(COMMAND_MEMORY - 1) :], command.command_id]
    _changed(state, command.command_id, at)
    outputs.append(_snapshot(state, config))
    return Result(state, outputs)


def _expire_manual(
    customer_id: str,
    sys_state: SystemState,
    system: StatusSystem,
    at: datetime,
    cause: str,
    config: LoyaltyConfig,
    outputs: list[Output],
) -> None:
    """Ends a manual status whose valid_until has passed within the open period: the level the
    counter earned at the last close applies again."""
    if sys_state.reason not in MANUAL_REASONS or sys_state.valid_until is None:
        return
    until = datetime.fromisoformat(sys_state.valid_until)
    if until > at:
        return
    previous, restored = sys_state.level, sys_state.base_level
    sys_state.level, sys_state.reason, sys_state.valid_until = restored, "period_close", None
    if previous == restored:
        return
    outputs.append(
        _status_change(
            customer_id,
            system,
            sys_state,
            previous,
            reason="manual",
            effective_from=until,
            caused_by=cause,
            id_parts=("manual_expired", sys_state.valid_until or until.isoformat()),
            comment="manual status expired",
        )
    )


def close_period(state: CustomerState, command: ClosePeriod, config: LoyaltyConfig) -> Result:
    """Closes `command.period` (and any earlier open one) of one system for this customer."""
    system = config.system(command.status_system)
    sys_state = state.systems.get(system.id)
    if sys_state is None:
        return Result(state)
    closing = _period(system.period, command.period)
    outputs: list[Output] = []
    open_before = sys_state.period
    _advance(state.customer_id, sys_state, system, closing.next(), command.command_id, config, outputs, [])
    if sys_state.period != open_before:
        _changed(state, command.command_id, closing.ends_at(config.timezone))
        outputs.append(_snapshot(state, config))
    return Result(state, outputs)


def close_due(state: CustomerState, frontier: Mapping[str, str], cause: str, config: LoyaltyConfig) -> Result:
    """Closes every period of the customer that the partition's close frontier has left behind.

    The same events whatever reached the customer first (the walk over the
    partition, or the customer's next input): `cause` is the input that moved the
    frontier, so an event id never carries two contents. It is a change of its
    own (a version and a snapshot), before the input that found it due.
    """
    if state.client_state in OUTSIDE_PROGRAMME:
        return Result(state)
    outputs: list[Output] = []
    starts: list[datetime] = []  # when the new periods began
    for system in config.status_systems:
        sys_state = state.systems.get(system.id)
        target_id = frontier.get(system.id)
        if sys_state is None or target_id is None:
            continue
        target = _period(system.period, target_id)
        if _period(system.period, sys_state.period) >= target:
            continue
        changes: list[ChangeNote] = []
        _advance(state.customer_id, sys_state, system, target, cause, config, outputs, changes)
        state.news += [(c.system_id, c.previous, c.current, c.direction) for c in changes]
        starts.append(target.starts_at(config.timezone))
    if not starts:
        return Result(state)
    _changed(state, cause, max(starts))  # as instants: ISO texts with offsets do not sort
    outputs.append(_snapshot(state, config))
    return Result(state, outputs)


def recalculated(
    state: CustomerState,
    old_version: int,
    old_levels: Mapping[str, str],
    cause: str,
    at: datetime,
    config: LoyaltyConfig,
) -> Result:
    """A customer rebuilt under new rules (`loyalty replay`) meets what the old rules had made:
    a `recalculation` status change for each system whose level differs from `old_levels`, and
    a snapshot numbered above `old_version`, so that sinks, which keep the newest, take it."""
    outputs: list[Output] = []
    for system in config.status_systems if state.client_state not in OUTSIDE_PROGRAMME else ():
        sys_state = state.systems.get(system.id)
        previous = old_levels.get(system.id)
        if sys_state is None or previous is None or previous == sys_state.level:
            continue
        known = previous in {level.id for level in system.levels}  # a level the new rules dropped
        outputs.append(
            _status_change(
                state.customer_id,
                system,
                sys_state,
                previous,
                change=None if known else "assign",
                reason="recalculation",
                effective_from=at,
                caused_by=cause,
                id_parts=("recalculation", cause),
            )
        )
    state.version = max(state.version, old_version)
    _changed(state, cause, at)
    outputs.append(_snapshot(state, config))
    return Result(state, outputs)


def _news(state: CustomerState) -> list[ChangeNote]:
    """Status changes made between receipts (a close the frontier made), announced on the next receipt."""
    if not state.news:
        return []  # nearly every receipt: no list made for the state, and none let go
    news = [ChangeNote(system_id, previous, current, way) for system_id, previous, current, way in state.news]
    state.news = []
    return news


def is_due(state: CustomerState, frontier: dict[str, str]) -> bool:
    """Whether `close_due` would change anything: the hot path's test, without building periods.
    A dict, not any Mapping: compiled, a dict's items are walked in C, a Mapping's by a method
    call each time a receipt asks."""
    if state.client_state in OUTSIDE_PROGRAMME:
        return False
    # Period ids of one kind ('2026-11', '2026-W05', '2026-Q4', '2026') sort as their periods do.
    systems = state.systems
    for system_id, target in frontier.items():  # a loop, not any() over a generator: half the cost
        sys_state = systems.get(system_id)
        if sys_state is not None and sys_state.period < target:
            return True
    return False


def _changed(state: CustomerState, cause: str, occurred_at: datetime) -> None:
    state.version += 1
    state.last_cause = (cause, occurred_at)  # its ISO text made when written or shown: once, not per receipt


def _snapshot(state: CustomerState, config: LoyaltyConfig) -> Output:
    """The customer-status snapshot of the state as it is now, made when first read.

    It must be read before the state changes again (the live pipeline reads only each
    customer's latest): read later it would describe a newer state under this version's
    id, so that raises instead.
    """
    version, (caused_by, occurred_at) = state.version, state.last_cause

    def make() -> dict[str, Any]:
        if state.version != version:
            raise RuntimeError(
                f"the snapshot of {state.customer_id} version {version} was read after the state moved on "
                f"to version {state.version}"
            )
        return status_view(state, config, caused_by=caused_by, occurred_at=iso(occurred_at)).value

    return Output(events.OutputKind.CUSTOMER_STATUS, state.customer_id, make=make)


def _system_state(
    state: CustomerState,
    system: StatusSystem,
    at: datetime,
    cause: str,
    config: LoyaltyConfig,
    outputs: list[Output],
    changes: list[ChangeNote],
) -> SystemState:
    existing = state.systems.get(system.id)
    if existing is not None:
        return existing
    first = system.levels[0].id
    period = period_containing(at, system.period, config.timezone)
    created = SystemState(level=first, base_level=first, period=period.id)
    state.systems[system.id] = created
    outputs.append(
        _status_change(
            state.customer_id,
            system,
            created,
            None,
            change="assign",
            reason="initial",
            effective_from=at,
            caused_by=cause,
            id_parts=("initial",),
        )
    )
    changes.append(ChangeNote(system.id, None, first, "assign"))
    return created


def _advance(
    customer_id: str,
    sys_state: SystemState,
    system: StatusSystem,
    target: Period,
    cause: str,
    config: LoyaltyConfig,
    outputs: list[Output],
    changes: list[ChangeNote],
) -> None:
    """Closes every open period of the customer before `target`, one period at a time."""
    if sys_state.period == target.id:
        return  # nearly every input: it falls in the open period
    current = _period(system.period, sys_state.period)
    walked = 0
    while current < target:
        counter = counter_value(system, sys_state)
        next_level = level_after_close(system, sys_state.base_level, counter).id
        previous = sys_state.level
        sys_state.closed_period, sys_state.closed_amount, sys_state.closed_count = (
            current.id,
            sys_state.amount,
            sys_state.count,
        )
        sys_state.closed_base = sys_state.base_level
        sys_state.closed_friends, sys_state.closed_days = sys_state.friends, sys_state.days
        sys_state.friends, sys_state.days = 0, []
        walked += 1
        following = current.next() if walked < MAX_PERIODS_TO_WALK else target
        sys_state.period = following.id
        sys_state.amount, sys_state.count, sys_state.peak_count = Decimal(0), 0, 0
        if sys_state.instant_sales:  # an instant level ends with its period, and its sales stand for nothing
            sys_state.instant_sales = {}
        sys_state.base_level = next_level
        starts = current.ends_at(config.timezone)
        if _manual_holds(sys_state, starts):
            # A manual or batch status holds until its valid_until; the close still
            # records what the counter earned, for when it ends.
            current = following
            continue
        sys_state.level = next_level
        sys_state.reason, sys_state.valid_until = "period_close", None
        if next_level != previous:
            change = direction(system, previous, next_level)
            outputs.append(
                _status_change(
                    customer_id,
                    system,
                    sys_state,
                    previous,
                    reason="period_close",
                    effective_from=starts,
                    caused_by=cause,
                    id_parts=("period_close", current.id),
                    closed=(current.id, counter),
                )
            )
            changes.append(ChangeNote(system.id, previous, next_level, change))
        current = following


def _correct_closed(
    customer_id: str,
    sys_state: SystemState,
    system: StatusSystem,
    cause: str,
    at: datetime,
    config: LoyaltyConfig,
    outputs: list[Output],
    changes: list[ChangeNote],
    reason: str = "late_receipt",
) -> None:
    """Re-decides the last close after a late receipt (or invitation, or merge) changed that period's counter.

    The customer gets the level the period really earned, from the start of the
    current period. A temporary level (instant or manual) stays; the corrected one
    applies when it ends.
    """
    if sys_state.closed_period is None or sys_state.closed_base is None:
        return
    closed = _period(system.period, sys_state.closed_period)
    counter = closed_counter_value(system, sys_state)
    corrected = level_after_close(system, sys_state.closed_base, counter).id
    if corrected == sys_state.base_level:
        return
    sys_state.base_level = corrected
    if sys_state.reason not in ("period_close", "late_receipt", "merge"):
        return
    previous = sys_state.level
    sys_state.level, sys_state.reason = corrected, reason
    change = direction(system, previous, corrected)
    outputs.append(
        _status_change(
            customer_id,
            system,
            sys_state,
            previous,
            reason=reason,
            effective_from=closed.ends_at(config.timezone),
            occurred_at=at,
            caused_by=cause,
            id_parts=(reason, cause),
            closed=(closed.id, counter),
        )
    )
    changes.append(ChangeNote(system.id, previous, corrected, change))


def _instant_upgrade(
    customer_id: str,
    sys_state: SystemState,
    system: StatusSystem,
    receipt: Receipt,
    config: LoyaltyConfig,
    outputs: list[Output],
    changes: list[ChangeNote],
) -> str | None:
    """Applies the instant rules a sale of the open period meets. Returns the highest level they
    lead to, which the sale stands for (`SystemState.instant_sales`) until it is returned in
    full, whether or not it raised the level; None when it meets no rule."""
    ranks = system.ranks
    stands: str | None = None
    for rule in system.instant_upgrades:
        if receipt.total <= rule.when.single_purchase_above:
            continue
        if stands is None or ranks[rule.to] > ranks[stands]:
            stands = rule.to
        if ranks[rule.to] <= ranks[sys_state.level]:
            continue
        previous = sys_state.level
        until = _period(system.period, sys_state.period).ends_at(config.timezone)
        sys_state.level, sys_state.reason, sys_state.valid_until = rule.to, "instant_rule", until.isoformat()
        outputs.append(
            _status_change(
                customer_id,
                system,
                sys_state,
                previous,
                change="upgrade",
                reason="instant_rule",
                effective_from=receipt.issued_at,
                caused_by=receipt.receipt_id,
                id_parts=("instant_rule", rule.id, receipt.receipt_id),
            )
        )
        changes.append(ChangeNote(system.id, previous, rule.to, "upgrade"))
    if stands is not None:
        sys_state.instant_sales[stands] = sys_state.instant_sales.get(stands, 0) + 1
    return stands


def _withdraw_instant(
    customer_id: str,
    sys_state: SystemState,
    system: StatusSystem,
    original: ReceiptRecord,
    receipt: Receipt,
    config: LoyaltyConfig,
    outputs: list[Output],
    changes: list[ChangeNote],
) -> None:
    """A sale returned in full stops standing for an instant upgrade of its period.

    The upgrade in force stays while another sale of the open period that met a rule to its
    level is not returned in full: that sale is held to the standard of the one that caused it,
    which a partial return does not revoke either, so the level never depends on the order of
    partial and full returns. Otherwise it falls to the highest level a remaining sale still
    stands for, or to the earned level (`return_revoked`).
    """
    withdrawn = [level for system_id, level in original.instant if system_id == system.id]
    if not withdrawn:
        return
    sold = datetime.fromtimestamp(original.issued_at, UTC)
    if period_containing(sold, system.period, config.timezone).id != sys_state.period:
        return  # its period has closed, and what its sales stood for with it
    ranks, standing = system.ranks, sys_state.instant_sales
    for stored in withdrawn:
        level = stored or _highest_instant_level(system, original.total)  # a record stored without it
        left = standing.get(level, 0) - 1
        if left > 0:
            standing[level] = left
        else:
            standing.pop(level, None)
    if sys_state.reason != "instant_rule":
        return  # the level in force is not an instant one
    held = max(standing, key=lambda level: ranks.get(level, -1), default=None)
    held_rank = ranks.get(held, -1) if held is not None else -1
    if held_rank >= ranks[sys_state.level]:
        return  # another sale of the period still earns the level in force
    restored = held if held is not None and held_rank > ranks[sys_state.base_level] else sys_state.base_level
    _revoke_instant(customer_id, sys_state, system, receipt, restored, outputs, changes)


def _highest_instant_level(system: StatusSystem, total: Decimal) -> str:
    """The highest level an instant rule of the system leads a sale of `total` to ("" for none)."""
    met = [rule.to for rule in system.instant_upgrades if total > rule.when.single_purchase_above]
    return max(met, key=system.ranks.__getitem__, default="")


def _revoke_instant(
    customer_id: str,
    sys_state: SystemState,
    system: StatusSystem,
    receipt: Receipt,
    restored: str,
    outputs: list[Output],
    changes: list[ChangeNote],
) -> None:
    """Lowers an instant level to `restored`: the earned level, or a lower instant one that a
    remaining sale still stands for (which lasts, like any instant level, to the period's end)."""
    previous = sys_state.level
    if previous == restored:
        return
    if restored == sys_state.base_level:
        sys_state.level, sys_state.reason, sys_state.valid_until = restored, "return_revoked", None
    else:
        sys_state.level = restored
    outputs.append(
        _status_change(
            customer_id,
            system,
            sys_state,
            previous,
            reason="return_revoked",
            effective_from=receipt.issued_at,
            caused_by=receipt.receipt_id,
            id_parts=("return_revoked", receipt.receipt_id),
        )
    )
    changes.append(ChangeNote(system.id, previous, restored, direction(system, previous, restored)))


def _purchase_offers(
    state: CustomerState, receipt: Receipt, levels_before: dict[str, str], config: LoyaltyConfig
) -> list[Output]:
    """Offers for a counted sale, judged by the level in force when the receipt was issued."""
    fired: list[Output] = []
    for offer in config.offers:
        if offer.trigger != "purchase" or offer.status_system is None:
            continue
        if offer.client_states is not None and state.client_state not in offer.client_states:
            continue
        sys_state = state.systems[offer.status_system]
        if offer.every_nth_purchase is not None and (
            sys_state.count % offer.every_nth_purchase != 0 or sys_state.count <= sys_state.peak_count
        ):
            # Not an n-th purchase, or one already rewarded before a return lowered the count.
            continue
        output = _offer_output(offer, levels_before[offer.status_system], state.customer_id, receipt)
        if output is not None:
            fired.append(output)
    return fired


def _offer_output(offer: Offer, level: str, customer_id: str, receipt: Receipt) -> Output | None:
    """The offer's trigger for this receipt at this level, or None where the level earns nothing."""
    action = offer.action
    points: int | None = None
    percent: Decimal | None = None
    amount: Decimal | None = None
    expires: datetime | None = None
    if action.bonus_points is not None:
        points = action.bonus_points if isinstance(action.bonus_points, int) else action.bonus_points.get(level)
        if not points:
            return None
        expires = receipt.issued_at + timedelta(days=action.expires_in_days) if action.expires_in_days else None
    else:
        found = action.discount_percent
        percent = found.get(level) if isinstance(found, dict) else found
        if not percent:
            return None
        amount = (receipt.total * percent / 100).quantize(CENT, rounding=ROUND_HALF_UP)
    return events.offer_trigger(
        customer_id=customer_id,
        offer_id=offer.id,
        receipt_id=receipt.receipt_id,
        caused_by=receipt.receipt_id,
        occurred_at=receipt.issued_at,
        points=points,
        expires_at=expires,
        percent=percent,
        amount=amount,
    )


def _common_variables(receipt: Receipt, config: LoyaltyConfig) -> dict[str, str]:
    return _common(config, receipt.total, receipt.customer_id, receipt.store_id)


def _common(config: LoyaltyConfig, total: Decimal, customer_id: str | None, store_id: str | None) -> dict[str, str]:
    return {
        "currency": config.currency,
        "receipt_total": events.money(total),
        "customer_id": customer_id or "",
        "store_id": store_id or "",
    }


def _message(
    state: CustomerState, receipt: Receipt, changes: list[ChangeNote], config: LoyaltyConfig, lines_when_read: bool
) -> Output:
    lines: list[str] | _LaterLines
    if lines_when_read and config.receipt_messages:  # without templates (a what-if) there is nothing to defer
        # `changes` is this receipt's own list, which nothing changes once its message is made.
        seen = [s.seen_by_messages(i) for i, s in state.systems.items()]
        lines = _LaterLines(
            config, receipt.total, receipt.customer_id, receipt.store_id, receipt.issued_at, changes, seen
        )
    else:
        lines = purchase_lines(config, state.systems, changes, _common_variables(receipt, config), receipt.issued_at)
    return events.receipt_message(
        receipt_id=receipt.receipt_id,
        pos_id=receipt.pos_id,
        customer_id=state.customer_id,
        lines=lines,
        occurred_at=receipt.issued_at,
    )


class _LaterLines:
    """A purchase's receipt lines, rendered when called from what the message rules read of the
    customer's standing when the receipt counted (`SystemState.seen_by_messages`) and of the
    receipt. A replay's states store that unrendered (`to_json`), and a resend renders it."""

    __slots__ = ("changes", "config", "customer_id", "store_id", "systems", "total", "when")

    def __init__(
        self,
        config: LoyaltyConfig,
        total: Decimal,
        customer_id: str | None,
        store_id: str | None,
        when: datetime,
        changes: list[ChangeNote],
        systems: list[tuple[Any, ...]],
    ) -> None:
        self.config, self.total, self.customer_id, self.store_id, self.when = config, total, customer_id, store_id, when
        self.changes, self.systems = changes, systems

    def __call__(self) -> list[str]:
        systems = {seen[0]: SystemState.from_seen(seen) for seen in self.systems}
        common = _common(self.config, self.total, self.customer_id, self.store_id)
        return purchase_lines(self.config, systems, self.changes, common, self.when)

    def to_json(self) -> list[Any]:
        changes = [[c.system_id, c.previous, c.current, c.direction] for c in self.changes]
        systems = [SystemState.seen_to_json(seen) for seen in self.systems]
        return [str(self.total), self.customer_id, self.store_id, changes, systems]

    @classmethod
    def from_json(cls, config: LoyaltyConfig, data: list[Any], when: datetime) -> _LaterLines:
        total, customer_id, store_id, changes, systems = data
        notes = [ChangeNote(system_id, previous, current, way) for system_id, previous, current, way in changes]
        seen = [SystemState.seen_from_json(s) for s in systems]
        return cls(config, Decimal(total), customer_id, store_id, when, notes, seen)


def resent(message: Output, config: LoyaltyConfig) -> Output:
    """A kept receipt message as a resend repeats it: one stored unrendered, rendered under `config`."""
    if not isinstance(message, events.ReceiptMessage) or (stored := message.stored()) is None:
        return message
    assert message.key is not None  # a receipt message's key is its till
    return events.receipt_message(
        receipt_id=message.receipt_id,
        pos_id=message.key,
        customer_id=message.customer_id,
        lines=_LaterLines.from_json(config, stored, message.occurred_at),
        occurred_at=message.occurred_at,
    )


def _anonymous_message(receipt: Receipt, config: LoyaltyConfig) -> Output:
    return events.receipt_message(
        receipt_id=receipt.receipt_id,
        pos_id=receipt.pos_id,
        customer_id=None,
        lines=anonymous_lines(config, _common_variables(receipt, config)),
        occurred_at=receipt.issued_at,
    )


def _remember(
    state: CustomerState,
    receipt: Receipt,
    issued: int,
    outputs: list[Output],
    config: LoyaltyConfig,
    *,
    instant: tuple[tuple[str, str], ...],
    spill: bool = False,
) -> None:
    receipts = state.receipts
    message = outputs[-1] if outputs and outputs[-1].kind is _RECEIPT_MESSAGE else None  # the rules' last event
    # By position (issued_at, total, returned, instant, message_event): keywords cost more.
    receipts[receipt.receipt_id] = ReceiptRecord(issued, receipt.total, ZERO, instant, message)
    count, memory = len(receipts), config.replay_memory
    if count > memory:
        # The newest `replay_memory` keep their message; the one just before them lets go.
        # From the end, and the record itself rather than its id looked up again: a customer
        # remembers up to `receipt_memory` ids, hundreds.
        next(islice(reversed(receipts.values()), memory, None)).message_event = None
    # Records are kept in counting order, which is time order but for late receipts:
    # dropping from the front keeps this O(1) per receipt, and a late receipt is
    # forgotten once it reaches the front. One walk from the front finds what to drop,
    # deleted after it: a dict's front is found by stepping over the slots its deletions
    # left (hundreds, for a customer at `receipt_memory`), and a new walk for each record
    # dropped stepped over them twice a receipt.
    horizon = (state.latest_issued_at or 0) - config.dedupe_seconds
    limit = config.receipt_memory
    dropped: list[str] = []
    for oldest_id, oldest in receipts.items():
        if oldest.issued_at >= horizon and count <= limit:
            break
        dropped.append(oldest_id)
        count -= 1
        if spill and oldest.issued_at >= horizon:
            oldest.message_event = None
            state.spilled.append((oldest_id, oldest))
            if oldest.issued_at > state.spilled_up_to:
                state.spilled_up_to = oldest.issued_at
        elif oldest.issued_at > state.forgotten_before:
            state.forgotten_before = oldest.issued_at
    for oldest_id in dropped:
        del receipts[oldest_id]


def recall_ids(state: CustomerState, receipt: Receipt) -> list[str]:
    """The receipt ids a receipt needs from the receipt store before it is applied: its own
    (a resend) and a return's original, those the state let go of only."""
    if not state.spilled_up_to:
        return []
    ids = [receipt.receipt_id]
    if receipt.original_receipt_id is not None:
        ids.append(receipt.original_receipt_id)
    return [receipt_id for receipt_id in ids if receipt_id not in state.receipts]


def recall(state: CustomerState, receipt_id: str, record: ReceiptRecord, config: LoyaltyConfig) -> bool:
    """Puts a record from the receipt store back in the state (a copy: the state may change it);
    False for one older than the de-duplication window, which the store may drop."""
    if record.issued_at < (state.latest_issued_at or 0) - config.dedupe_seconds:
        return False
    state.receipts[receipt_id] = ReceiptRecord(record.issued_at, record.total, record.returned, record.instant)
    return True


def _beyond_dedupe(state: CustomerState, issued_at: float, config: LoyaltyConfig) -> bool:
    """Whether a receipt issued then (epoch seconds) can no longer be told apart from a resend.

    Older than the window behind the customer's latest receipt, or no later than the
    second of the newest receipt the memory let go (`forgotten_before` is inclusive, and
    records keep whole seconds): a forgotten receipt sent again must not count again.
    """
    if state.latest_issued_at is None:
        return False
    if issued_at < state.latest_issued_at - config.dedupe_seconds:
        return True
    return state.forgotten_before > 0 and math.floor(issued_at) <= state.forgotten_before


def _status_change(
    customer_id: str,
    system: StatusSystem,
    sys_state: SystemState,
    previous: str | None,
    *,
    reason: str,
    effective_from: datetime,
    caused_by: str,
    id_parts: tuple[str, ...],
    occurred_at: datetime | None = None,
    change: str | None = None,
    closed: tuple[str, Decimal] | None = None,
    operator: str | None = None,
    comment: str | None = None,
) -> Output:
    """The status change of `system` from `previous` to the level `sys_state` holds now, after the
    state was updated. `change`: the direction where it is not simply previous -> current (an
    assignment); `closed`: (period id, counter) of the period whose close decided it, where the
    event reports that period rather than the open one (it then has no valid_until);
    `occurred_at`: when it happened, where that is not when it takes effect."""
    current = sys_state.level
    if closed is None:
        period, counter = sys_state.period, counter_value(system, sys_state)
        valid_until = datetime.fromisoformat(sys_state.valid_until) if sys_state.valid_until else None
    else:
        (period, counter), valid_until = closed, None
    return events.status_change(
        customer_id=customer_id,
        system_id=system.id,
        previous=previous,
        current=current,
        direction=change if change is not None else direction(system, previous, current),
        reason=reason,
        effective_from=effective_from,
        valid_until=valid_until,
        counter=format_counter(system, counter),
        period=period,
        caused_by=caused_by,
        occurred_at=occurred_at or effective_from,
        id_parts=id_parts,
        operator=operator,
        comment=comment,
    )
