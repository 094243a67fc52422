"""Receipt-message lines: the configured templates filled with a customer's metavariables."""

from __future__ import annotations

import functools
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from models.events import money, number
from models.levels import (
    FRIENDS_INVITED,
    PURCHASE_AMOUNT,
    PURCHASE_COUNT,
    ByIdentity,
    NextTarget,
    level_facts,
    next_target,
    to_keep,
)
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


class _SystemVariables:
    """A system's metavariables for one receipt, each made the first time a line asks for it.

    A receipt's templates name a handful of the variables; making all of them for every
    system on every receipt was most of the cost of a receipt message. The names resolve
    as they always have: the system's own variables first, then the level's extra
    privileges, then the receipt's (`common`), else empty.
    """

    __slots__ = (
        "_facts",
        "_target",
        "_target_made",
        "common",
        "config",
        "counter",
        "level",
        "made",
        "state",
        "system",
        "when",
    )

    def __init__(
        self, config: LoyaltyConfig, system: StatusSystem, state: SystemState, when: datetime, common: dict[str, str]
    ) -> None:
        self.config, self.system, self.state, self.when, self.common = config, system, state, when, common
        self.level = level_facts(system)[state.level]
        self.counter = counter_value(system, state)
        self.made: dict[str, str] = {}
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

    def get(self, key: str) -> str:
        value = self.made.get(key)
        if value is None:
            make = _VARIABLES.get(key)
            if make is not None:
                value = make(self)
            else:
                extras = self.level.extras
                value = extras[key] if key in extras else self.common.get(key, "")
            self.made[key] = value
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
    "discount_percent": lambda v: v.level.discount,
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
_PREVIOUS = "previous_status_name"


class _AsMapping(dict[str, str]):
    """A template's variables as `str.format_map` reads them (a template with a format spec or a
    conversion), with a status-changed rule's level before the change."""

    def __init__(self, variables: _SystemVariables, previous: str | None) -> None:
        super().__init__()
        self.variables, self.previous = variables, previous

    def __missing__(self, key: str) -> str:
        if key == _PREVIOUS and self.previous is not None:
            return self.previous
        return self.variables.get(key)


@dataclass(frozen=True, slots=True)
class _Step:
    """One rule of a configuration's receipt messages, as `purchase_lines` runs it: a purchase or
    at-risk rule once per status system it names, a status-change rule once."""

    text: str
    #: The text split once around the variables it names (`literals` has one more element);
    #: None where a variable has a format spec or a conversion, which `str.format` applies.
    literals: tuple[str, ...] | None
    names: tuple[str, ...]
    top_level_skips: bool  # `unless: top_level`
    system: StatusSystem | None = None  # purchase and at-risk rules
    at_risk: bool = False
    when: MessageWhen | None = None  # status-change rules
    status_system: str | None = None

    def render(self, variables: _SystemVariables, previous: str | None = None) -> str:
        """The line: `text` with each variable's value (`previous`: the level before a change)."""
        literals = self.literals
        if literals is None:
            return self.text.format_map(_AsMapping(variables, previous))
        parts = [literals[0]]
        for name, literal in zip(self.names, literals[1:], strict=True):
            parts.append(previous if previous is not None and name == _PREVIOUS else variables.get(name))
            parts.append(literal)
        return "".join(parts)


def _split(text: str) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """A template's literal parts and the variables between them (the config validated its syntax);
    no parts where a variable carries a format spec or a conversion, or is not a plain name."""
    literals: list[str] = []
    names: list[str] = []
    literal = ""
    for text_before, name, spec, conversion in string.Formatter().parse(text):
        literal += text_before
        if name is None:
            continue
        if spec or conversion is not None or not name.isidentifier():
            return None, ()
        literals.append(literal)
        names.append(name)
        literal = ""
    literals.append(literal)
    return tuple(literals), tuple(names)


def _plan_of(config: LoyaltyConfig) -> tuple[_Step, ...]:
    """The configuration's message rules, with what depends on the configuration alone (each
    rule's kind, the systems it applies to, its text split around its variables) worked out once."""
    steps: list[_Step] = []
    for rule in config.receipt_messages:
        if rule.when is MessageWhen.ANONYMOUS:
            continue
        skips = rule.unless is MessageUnless.TOP_LEVEL
        literals, names = _split(rule.text)
        if rule.when in (MessageWhen.PURCHASE, MessageWhen.AT_RISK):
            for system in config.status_systems:
                if rule.status_system in (None, system.id):
                    at_risk = rule.when is MessageWhen.AT_RISK
                    steps.append(_Step(rule.text, literals, names, skips, system, at_risk=at_risk))
            continue
        steps.append(_Step(rule.text, literals, names, skips, when=rule.when, status_system=rule.status_system))
    return tuple(steps)


_plan: ByIdentity[LoyaltyConfig, tuple[_Step, ...]] = ByIdentity(_plan_of, 64)


def _variables(
    known: dict[str, _SystemVariables],
    config: LoyaltyConfig,
    system: StatusSystem,
    state: SystemState,
    when: datetime,
    common: dict[str, str],
) -> _SystemVariables:
    """The system's variables for this receipt: made once, whichever line asks first."""
    found = known.get(system.id)
    if found is None:
        found = known[system.id] = _SystemVariables(config, system, state, when, common)
    return found


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
    for step in _plan(config):
        system = step.system
        if system is not None:
            state = systems.get(system.id)
            if state is None or (step.at_risk and not at_risk(system, state, when, config)):
                continue
            variables = _variables(known, config, system, state, when, common)
            if step.top_level_skips and not variables.get("next_status_name"):
                continue
            lines.append(step.render(variables))
            continue
        assert step.when is not None
        for change in changes:
            if step.status_system not in (None, change.system_id) or not _matches_change(step.when, change.direction):
                continue
            changed = config.system(change.system_id)
            variables = _variables(known, config, changed, systems[changed.id], when, common)
            if step.top_level_skips and not variables.get("next_status_name"):
                continue
            previous = changed.level(change.previous).name if change.previous else ""
            lines.append(step.render(variables, previous))
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
