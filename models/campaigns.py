"""Date-triggered campaigns (the birthday bonus) and the segments that select their customers.

A campaign run for a local date looks at one customer at a time; it grants each
customer an offer at most once per date, because the state records what it
granted and the event id is derived from the offer, the customer and the date.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta

from models import events
from models.events import Output
from models.levels import level_after_close, to_keep
from models.messages import at_risk, counter_value, format_counter
from models.periods import PeriodKind, local_midnight, parse_period, period_containing
from models.schema import LoyaltyConfig, Offer, Segment, StatusSystem
from models.state import OUTSIDE_PROGRAMME, CustomerState

#: How many granted (offer, date) pairs a customer remembers; runs older than that are not repeated anyway.
GRANT_MEMORY = 10


def birthday_on(birth: date, day: date) -> bool:
    """Whether `day` is the customer's birthday; 29 February birthdays are kept on 28 February
    in years without a 29th."""
    if (birth.month, birth.day) == (day.month, day.day):
        return True
    return (birth.month, birth.day) == (2, 29) and (day.month, day.day) == (2, 28) and not calendar.isleap(day.year)


def in_segment(state: CustomerState, segment: Segment | None, offer: Offer, day: date, config: LoyaltyConfig) -> bool:
    """All the segment's conditions hold for the customer on `day` (local)."""
    if state.client_state in OUTSIDE_PROGRAMME:
        return False
    if segment is None:
        return True
    if segment.client_states is not None and state.client_state not in segment.client_states:
        return False
    if segment.days_since_registration_at_least is not None:
        if state.registered_at is None:
            return False
        registered = datetime.fromisoformat(state.registered_at).astimezone(config.timezone).date()
        if (day - registered).days < segment.days_since_registration_at_least:
            return False
    for system_id, level in (segment.status or {}).items():
        sys_state = state.systems.get(system_id)
        if sys_state is None or sys_state.level != level:
            return False
    if segment.purchases_in_period_at_least is not None:
        system = config.system(offer.status_system) if offer.status_system else config.status_systems[0]
        sys_state = state.systems.get(system.id)
        period = period_containing(local_midnight(day, config.timezone), system.period, config.timezone)
        count = sys_state.count if sys_state is not None and sys_state.period == period.id else 0
        if count < segment.purchases_in_period_at_least:
            return False
    return True


def worth_a_look(stored: CustomerState | bytes, config: LoyaltyConfig) -> bool:
    """Whether a daily run must look at this customer (decoding it if it is stored as bytes): anyone
    may be at risk where a system sends at-risk notices; otherwise only customers with a birth
    date can have a birthday."""
    if any(system.at_risk_days for system in config.status_systems):
        return True
    if isinstance(stored, CustomerState):
        return stored.birth_date is not None
    return CustomerState.stored_with_birth_date(stored)


def daily_run(state: CustomerState, day: date, config: LoyaltyConfig) -> list[Output]:
    """Everything the daily run gives a customer on `day`: campaign grants, then at-risk notices."""
    return run_campaigns(state, day, config) + at_risk_notices(state, day, config)


def run_campaigns(state: CustomerState, day: date, config: LoyaltyConfig) -> list[Output]:
    """The offers the date-triggered campaigns grant this customer on `day`; records them in the state."""
    outputs: list[Output] = []
    if state.birth_date is None:
        return outputs
    birth = date.fromisoformat(state.birth_date)
    for offer in config.offers:
        if offer.trigger != "birthday" or not birthday_on(birth, day):
            continue
        grant = f"{offer.id}:{day.isoformat()}"
        if grant in state.granted or not in_segment(state, offer.segment, offer, day, config):
            continue
        points = _points(offer, state)
        if not points:
            continue
        starts = local_midnight(day, config.timezone)
        days = offer.action.expires_in_days
        outputs.append(
            events.offer_trigger(
                customer_id=state.customer_id,
                offer_id=offer.id,
                receipt_id=None,
                caused_by=f"campaign:{grant}",
                occurred_at=starts,
                points=points,
                expires_at=local_midnight(day + timedelta(days=days), config.timezone) if days else None,
            )
        )
        state.granted = [*state.granted[-(GRANT_MEMORY - 1) :], grant]
    return outputs


def at_risk_notices(state: CustomerState, day: date, config: LoyaltyConfig) -> list[Output]:
    """ "Will downgrade" notices: within a system's `at_risk_days` of its period end, a customer
    whose counter would lower their level gets one `at_risk` status change per period."""
    outputs: list[Output] = []
    if state.client_state in OUTSIDE_PROGRAMME:
        return outputs
    at = local_midnight(day, config.timezone)
    for system in config.status_systems:
        sys_state = state.systems.get(system.id)
        if sys_state is None or system.at_risk_days is None:
            continue
        if sys_state.period != period_containing(at, system.period, config.timezone).id:
            continue  # no purchase this period yet: its close is decided when it comes
        notice = f"at_risk:{system.id}:{sys_state.period}"
        if notice in state.granted or not at_risk(system, sys_state, at, config):
            continue
        counter = counter_value(system, sys_state)
        falls_to = level_after_close(system, sys_state.base_level, counter).id
        keep = to_keep(system, sys_state.level, sys_state.base_level, counter)
        change = events.status_change(
            customer_id=state.customer_id,
            system_id=system.id,
            previous=sys_state.level,
            current=falls_to,
            direction="at_risk",
            reason="at_risk",
            effective_from=_period_end(system, sys_state.period, config),
            valid_until=None,
            counter=format_counter(system, counter),
            period=sys_state.period,
            caused_by=f"daily:{day.isoformat()}",
            occurred_at=at,
            id_parts=("at_risk", sys_state.period),
        )
        change.value["keep_remaining"] = format_counter(system, keep) if keep is not None else None
        outputs.append(change)
        state.granted = [*state.granted[-(GRANT_MEMORY - 1) :], notice]
    return outputs


def _period_end(system: StatusSystem, period_id: str, config: LoyaltyConfig) -> datetime:
    return parse_period(PeriodKind(system.period), period_id).ends_at(config.timezone)


def _points(offer: Offer, state: CustomerState) -> int | None:
    points = offer.action.bonus_points
    if points is None or isinstance(points, int):
        return points
    sys_state = state.systems.get(offer.status_system or "")
    return points.get(sys_state.level) if sys_state is not None else None
