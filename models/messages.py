"""Receipt-message lines: the configured templates filled with a customer's metavariables."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from models.events import money, number
from models.levels import FRIENDS_INVITED, PURCHASE_AMOUNT, PURCHASE_COUNT, NextTarget, next_target, to_keep
from models.periods import MONTH_NAMES, PeriodKind, local_date, parse_period
from models.schema import (
    CounterKind,
    LoyaltyConfig,
    MessageUnless,
    MessageWhen,
    StatusSystem,
)
from models.state import SystemState


@dataclass(frozen=True, slots=True)
class ChangeNote:
    """A status change this receipt caused, as the message rules see it."""

    system_id: str
    previous: str | None
    current: str
    direction: str


def counter_value(system: StatusSystem, state: SystemState) -> Decimal:
    """The open period's counter of the kind the system counts: the value its close decides by,
    below zero while returns of earlier periods' receipts outweigh the period's sales."""
    return _pick(system.counter, state.amount, state.count, state.friends, state.days)


def closed_counter_value(system: StatusSystem, state: SystemState) -> Decimal:
    """The last closed period's counter, as late receipts and invitations have corrected it."""
    return _pick(system.counter, state.closed_amount, state.closed_count, state.closed_friends, state.closed_days)


def _pick(kind: CounterKind, amount: Decimal, count: int, friends: int, days: list[int]) -> Decimal:
    if kind is PURCHASE_AMOUNT:
        return amount
    if kind is PURCHASE_COUNT:
        return Decimal(count)
    if kind is FRIENDS_INVITED:
        return Decimal(friends)
    return Decimal(len(days))


def format_counter(system: StatusSystem, value: Decimal) -> str:
    if system.counter is PURCHASE_AMOUNT:
        return money(value)
    return str(number(value))


@functools.lru_cache(maxsize=4096)
def _period_facts(kind: PeriodKind, period_id: str) -> tuple[date, str, str, str]:
    """Last day, name, next period's name and the 'ends' text of a period: the same for everyone in it."""
    period = parse_period(kind, period_id)
    last_day = period.last_day
    return last_day, period.name, period.next().name, f"{last_day.day} {MONTH_NAMES[last_day.month - 1]}"


class _SystemVariables(dict[str, str]):
    """A system's metavariables, each made the first time a template asks for it.

    A receipt's templates name a handful of the variables; making all of them for
    every system on every receipt was most of the cost of a receipt message. The
    names resolve as they always have: the system's own variables first, then the
    level's extra privileges, then the receipt's (`common`), else empty.

    `target` and `facts` are cached by hand, not with `functools.cached_property`:
    on Python 3.11 its first read takes a lock, and a receipt makes four of them.
    """

    __slots__ = ("_facts", "_target", "_target_made", "common", "config", "counter", "level", "state", "system", "when")

    def __init__(
        self, config: LoyaltyConfig, system: StatusSystem, state: SystemState, when: datetime, common: dict[str, str]
    ) -> None:
        super().__init__()
        self.config, self.system, self.state, self.when, self.common = config, system, state, when, common
        self.level = system.level(state.level)
        self.counter = counter_value(system, state)
        self._target: NextTarget | None = None
        self._target_made = False
        self._facts: tuple[date, str, str, str] | None = None

    @property
    def target(self) -> NextTarget | None:
        if not self._target_made:
            self._target = next_target(self.system, self.state.level, self.state.base_level, self.counter)
            self._target_made = True
        return self._target

    @property
    def facts(self) -> tuple[date, str, str, str]:
        if self._facts is None:
            self._facts = _period_facts(self.system.period, self.state.period)
        return self._facts

    def __missing__(self, key: str) -> str:
        make = _VARIABLES.get(key)
        if make is not None:
            value = make(self)
        else:
            extra = self.level.privileges.model_extra or {}
            value = str(extra[key]) if key in extra else self.common.get(key, "")
        self[key] = value
        return value


#: A counter as a customer reads it. The period's counters go below zero while returns of earlier
#: periods' receipts outweigh its sales (models/engine._apply_return); a receipt shows nothing
#: spent rather than a negative amount, and `remaining` is still measured from the true counter,
#: so "spend 152.01 more" stays a promise that holds.
_NONE = Decimal(0)


def _days_left(v: _SystemVariables) -> str:
    days = (v.facts[0] - local_date(v.when, v.config.timezone)).days + 1
    return str(max(days, 0))


def _keep_remaining(v: _SystemVariables) -> str:
    keep = to_keep(v.system, v.state.level, v.state.base_level, v.counter)
    return format_counter(v.system, keep) if keep is not None else ""


def _threshold(v: _SystemVariables) -> str:
    target = v.target
    return format_counter(v.system, target.level.above or Decimal(0)) if target else ""


_VARIABLES: dict[str, Callable[[_SystemVariables], str]] = {
    "status_name": lambda v: v.level.name,
    "status_id": lambda v: v.level.id,
    "system_name": lambda v: v.system.name,
    "discount_percent": lambda v: str(number(v.level.privileges.discount_percent)),
    "counter": lambda v: format_counter(v.system, max(v.counter, _NONE)),
    "remaining": lambda v: format_counter(v.system, v.target.remaining) if v.target else "",
    "next_status_name": lambda v: v.target.level.name if v.target else "",
    "next_level_threshold": _threshold,
    "currency": lambda v: v.config.currency,
    "period_name": lambda v: v.facts[1],
    "period_end": lambda v: v.facts[3],
    "days_left": _days_left,
    "next_period_name": lambda v: v.facts[2],
    "purchase_count": lambda v: str(max(v.state.count, 0)),
    "purchase_amount": lambda v: money(max(v.state.amount, _NONE)),
    "keep_by": lambda v: v.facts[3],
    "keep_remaining": _keep_remaining,
}


class _WithPrevious(dict[str, str]):
    """A status-changed rule's variables: the system's, and the level the customer had before."""

    def __init__(self, variables: _SystemVariables, previous_name: str) -> None:
        super().__init__(previous_status_name=previous_name)
        self.variables = variables

    def __missing__(self, key: str) -> str:
        return self.variables[key]


@dataclass(frozen=True, slots=True)
class _Step:
    """One rule of a configuration's receipt messages, as `purchase_lines` runs it: a purchase or
    at-risk rule once per status system it names, a status-change rule once."""

    text: str
    top_level_skips: bool  # `unless: top_level`
    system: StatusSystem | None = None  # purchase and at-risk rules
    at_risk: bool = False
    when: MessageWhen | None = None  # status-change rules
    status_system: str | None = None


_plans: dict[int, tuple[LoyaltyConfig, tuple[_Step, ...]]] = {}
_MAX_PLANS = 64


def _plan(config: LoyaltyConfig) -> tuple[_Step, ...]:
    """The configuration's message rules, with what depends on the configuration alone (each
    rule's kind, the systems it applies to) worked out once; cached by identity, since a
    configuration is frozen."""
    entry = _plans.get(id(config))
    if entry is not None and entry[0] is config:
        return entry[1]
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()  # a worker has one configuration and a what-if two; only tests make many
    steps: list[_Step] = []
    for rule in config.receipt_messages:
        if rule.when is MessageWhen.ANONYMOUS:
            continue
        skips = rule.unless is MessageUnless.TOP_LEVEL
        if rule.when in (MessageWhen.PURCHASE, MessageWhen.AT_RISK):
            for system in config.status_systems:
                if rule.status_system in (None, system.id):
                    steps.append(_Step(rule.text, skips, system, at_risk=rule.when is MessageWhen.AT_RISK))
            continue
        steps.append(_Step(rule.text, skips, when=rule.when, status_system=rule.status_system))
    plan = tuple(steps)
    _plans[id(config)] = (config, plan)
    return plan


def purchase_lines(
    config: LoyaltyConfig,
    systems: dict[str, SystemState],
    changes: list[ChangeNote],
    common: dict[str, str],
    when: datetime,
) -> list[str]:
    """The lines for an identified customer's receipt, in configuration order."""
    lines: list[str] = []
    known: dict[str, _SystemVariables] = {}  # system id -> its variables, made once per receipt

    def variables_of(system: StatusSystem, state: SystemState) -> _SystemVariables:
        found = known.get(system.id)
        if found is None:
            found = known[system.id] = _SystemVariables(config, system, state, when, common)
        return found

    for step in _plan(config):
        system = step.system
        if system is not None:
            state = systems.get(system.id)
            if state is None or (step.at_risk and not at_risk(system, state, when, config)):
                continue
            variables = variables_of(system, state)
            if step.top_level_skips and not variables["next_status_name"]:
                continue
            lines.append(step.text.format_map(variables))
            continue
        assert step.when is not None
        for change in changes:
            if step.status_system not in (None, change.system_id) or not _matches_change(step.when, change.direction):
                continue
            changed = config.system(change.system_id)
            variables = variables_of(changed, systems[changed.id])
            if step.top_level_skips and not variables["next_status_name"]:
                continue
            previous = changed.level(change.previous).name if change.previous else ""
            lines.append(step.text.format_map(_WithPrevious(variables, previous)))
    return lines


def at_risk(system: StatusSystem, state: SystemState, when: datetime, config: LoyaltyConfig) -> bool:
    """Whether the open period ends within the system's `at_risk_days` of `when` (local days,
    the last day counting as 1) and its counter would leave the customer below the level now."""
    if system.at_risk_days is None:
        return False
    days_left = (_period_facts(system.period, state.period)[0] - local_date(when, config.timezone)).days + 1
    if not 0 < days_left <= system.at_risk_days:
        return False
    return to_keep(system, state.level, state.base_level, counter_value(system, state)) is not None


def _matches_change(when: MessageWhen, direction: str) -> bool:
    match when:
        case MessageWhen.STATUS_CHANGED:
            return True
        case MessageWhen.STATUS_UPGRADED:
            return direction == "upgrade"
        case MessageWhen.STATUS_DOWNGRADED:
            return direction == "downgrade"
        case _:
            return False


def anonymous_lines(config: LoyaltyConfig, common: dict[str, str]) -> list[str]:
    blank = _Blank(common)
    return [rule.text.format_map(blank) for rule in config.receipt_messages if rule.when is MessageWhen.ANONYMOUS]


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""
