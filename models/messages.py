"""Receipt-message lines: the configured templates filled with a customer's metavariables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from config.schema import (
    CounterKind,
    LoyaltyConfig,
    MessageUnless,
    MessageWhen,
    ReceiptMessage,
    StatusSystem,
)
from models.events import money, number
from models.levels import next_target, to_keep
from models.periods import MONTH_NAMES, PeriodKind, parse_period
from models.state import SystemState


@dataclass(frozen=True, slots=True)
class ChangeNote:
    """A status change this receipt caused, as the message rules see it."""

    system_id: str
    previous: str | None
    current: str
    direction: str


def counter_value(system: StatusSystem, state: SystemState) -> Decimal:
    """The open period's counter of the kind the system counts."""
    return _pick(system.counter, state.amount, state.count, state.friends, state.days)


def closed_counter_value(system: StatusSystem, state: SystemState) -> Decimal:
    """The last closed period's counter, as late receipts and invitations have corrected it."""
    return _pick(system.counter, state.closed_amount, state.closed_count, state.closed_friends, state.closed_days)


def _pick(kind: CounterKind, amount: Decimal, count: int, friends: int, days: list[int]) -> Decimal:
    if kind is CounterKind.PURCHASE_AMOUNT:
        return amount
    if kind is CounterKind.PURCHASE_COUNT:
        return Decimal(count)
    if kind is CounterKind.FRIENDS_INVITED:
        return Decimal(friends)
    return Decimal(len(days))


def format_counter(system: StatusSystem, value: Decimal) -> str:
    if system.counter is CounterKind.PURCHASE_AMOUNT:
        return money(value)
    return str(number(value))


def system_variables(config: LoyaltyConfig, system: StatusSystem, state: SystemState, when: datetime) -> dict[str, str]:
    """Metavariables describing the customer's standing in one system at instant `when`."""
    level = system.level(state.level)
    counter = counter_value(system, state)
    period = parse_period(PeriodKind(system.period), state.period)
    target = next_target(system, state.level, state.base_level, counter)
    last_day = period.last_day
    days_left = (last_day - when.astimezone(config.timezone).date()).days + 1
    ends = f"{last_day.day} {MONTH_NAMES[last_day.month - 1]}"
    variables = {
        "status_name": level.name,
        "status_id": level.id,
        "system_name": system.name,
        "discount_percent": str(number(level.privileges.discount_percent)),
        "counter": format_counter(system, counter),
        "remaining": format_counter(system, target.remaining) if target else "",
        "next_status_name": target.level.name if target else "",
        "next_level_threshold": format_counter(system, target.level.above or Decimal(0)) if target else "",
        "currency": config.currency,
        "period_name": period.name,
        "period_end": ends,
        "days_left": str(max(days_left, 0)),
        "next_period_name": period.next().name,
        "purchase_count": str(state.count),
        "purchase_amount": money(state.amount),
        "keep_by": ends,
    }
    keep = to_keep(system, state.level, state.base_level, counter)
    variables["keep_remaining"] = format_counter(system, keep) if keep is not None else ""
    extra = level.privileges.model_extra or {}
    variables.update({k: str(v) for k, v in extra.items() if k not in variables})
    return variables


def _render(rule: ReceiptMessage, variables: dict[str, str]) -> str:
    return rule.text.format_map(_Blank(variables))


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def purchase_lines(
    config: LoyaltyConfig,
    systems: dict[str, SystemState],
    changes: list[ChangeNote],
    common: dict[str, str],
    when: datetime,
) -> list[str]:
    """The lines for an identified customer's receipt, in configuration order."""
    lines: list[str] = []
    known: dict[str, dict[str, str]] = {}  # system id -> its variables, made once per receipt

    def variables_of(system: StatusSystem) -> dict[str, str]:
        if system.id not in known:
            known[system.id] = system_variables(config, system, systems[system.id], when)
        return known[system.id]

    for rule in config.receipt_messages:
        if rule.when is MessageWhen.ANONYMOUS:
            continue
        if rule.when in (MessageWhen.PURCHASE, MessageWhen.AT_RISK):
            for system in config.status_systems:
                if rule.status_system not in (None, system.id) or system.id not in systems:
                    continue
                if rule.when is MessageWhen.AT_RISK and not at_risk(system, systems[system.id], when, config):
                    continue
                variables = variables_of(system)
                if rule.unless is MessageUnless.TOP_LEVEL and not variables["next_status_name"]:
                    continue
                lines.append(_render(rule, common | variables))
            continue
        for change in changes:
            if rule.status_system not in (None, change.system_id):
                continue
            if not _matches_change(rule.when, change.direction):
                continue
            system = config.system(change.system_id)
            variables = dict(variables_of(system))
            variables["previous_status_name"] = system.level(change.previous).name if change.previous else ""
            if rule.unless is MessageUnless.TOP_LEVEL and not variables["next_status_name"]:
                continue
            lines.append(_render(rule, common | variables))
    return lines


def at_risk(system: StatusSystem, state: SystemState, when: datetime, config: LoyaltyConfig) -> bool:
    """Whether the open period ends within the system's `at_risk_days` of `when` (local days,
    the last day counting as 1) and its counter would leave the customer below the level now."""
    if system.at_risk_days is None:
        return False
    period = parse_period(PeriodKind(system.period), state.period)
    days_left = (period.last_day - when.astimezone(config.timezone).date()).days + 1
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
    return [_render(rule, common) for rule in config.receipt_messages if rule.when is MessageWhen.ANONYMOUS]
