"""The birthday campaign and segments on the pure core."""

from __future__ import annotations

from datetime import date

import pytest

from config.loading import DEFAULT_CONFIG, parse_config
from models.campaigns import birthday_on, in_segment, run_campaigns
from models.schema import ClientState, Segment
from models.state import CustomerState, SystemState
from tests.unit.test_engine import CONFIG

BIRTHDAY = next(o for o in CONFIG.offers if o.trigger == "birthday")


def member(
    birth: str | None = "1990-11-25", registered: str | None = "2024-06-01T10:00:00+02:00", **kw
) -> CustomerState:
    return CustomerState(customer_id="C-1", birth_date=birth, registered_at=registered, **kw)


@pytest.mark.parametrize(
    ("birth", "day", "expected"),
    [
        ("1990-11-25", "2026-11-25", True),
        ("1990-11-25", "2026-11-24", False),
        ("2000-02-29", "2027-02-28", True),  # no 29 February in 2027: the 28th
        ("2000-02-29", "2028-02-28", False),  # 2028 has a 29th
        ("2000-02-29", "2028-02-29", True),
        ("2000-02-28", "2028-02-29", False),
        ("2000-03-01", "2027-02-28", False),
    ],
)
def test_birthdays_and_leap_days(birth, day, expected):
    assert birthday_on(date.fromisoformat(birth), date.fromisoformat(day)) is expected


def test_a_member_of_a_year_gets_500_points_expiring_in_30_days_once():
    state = member()
    (grant,) = run_campaigns(state, date(2026, 11, 25), CONFIG)
    value = grant.value
    assert (value["offer_id"], value["points"], value["customer_id"]) == ("birthday_bonus", 500, "C-1")
    assert value["occurred_at"] == "2026-11-25T00:00:00+01:00"
    assert value["expires_at"] == "2026-12-25T00:00:00+01:00"
    assert value["caused_by"] == "campaign:birthday_bonus:2026-11-25"
    assert run_campaigns(state, date(2026, 11, 25), CONFIG) == []  # the same date again
    again = member()
    assert run_campaigns(again, date(2026, 11, 25), CONFIG)[0].value["event_id"] == value["event_id"]


@pytest.mark.parametrize(
    "state",
    [
        member(registered="2026-01-01T10:00:00+01:00"),  # 328 days: not a year yet
        member(registered=None),  # never registered
        member(birth=None),
        member(client_state=ClientState.EXCLUDED),
        member(client_state=ClientState.DELETED),
    ],
)
def test_who_gets_nothing(state):
    assert run_campaigns(state, date(2026, 11, 25), CONFIG) == []


def test_registration_a_year_ago_is_counted_in_local_days():
    # 365 days before 25 November 2026 is 25 November 2025, in Berlin (UTC+1 then).
    late_evening = member(registered="2025-11-25T22:30:00+00:00")  # 23:30 on the 25th in Berlin
    after_midnight = member(registered="2025-11-25T23:30:00+00:00")  # 00:30 on the 26th in Berlin
    assert len(run_campaigns(late_evening, date(2026, 11, 25), CONFIG)) == 1
    assert run_campaigns(after_midnight, date(2026, 11, 25), CONFIG) == []


def test_segments_combine_all_their_conditions():
    day = date(2026, 11, 25)
    gold = {"monthly_amount": SystemState(level="gold", base_level="gold", period="2026-11", count=3)}
    state = member(systems=gold)
    offer = BIRTHDAY
    assert in_segment(state, Segment(status={"monthly_amount": "gold"}), offer, day, CONFIG)
    assert not in_segment(state, Segment(status={"monthly_amount": "silver"}), offer, day, CONFIG)
    assert not in_segment(state, Segment(status={"monthly_count": "pro"}), offer, day, CONFIG)
    assert in_segment(state, Segment(purchases_in_period_at_least=3), offer, day, CONFIG)
    assert not in_segment(state, Segment(purchases_in_period_at_least=4), offer, day, CONFIG)
    # Purchases of an earlier month are not this month's.
    assert not in_segment(state, Segment(purchases_in_period_at_least=3), offer, date(2026, 12, 2), CONFIG)
    assert in_segment(state, Segment(client_states=(ClientState.REGISTERED,)), offer, day, CONFIG)
    assert not in_segment(state, Segment(client_states=(ClientState.NEW,)), offer, day, CONFIG)
    both = Segment(status={"monthly_amount": "gold"}, days_since_registration_at_least=1000)
    assert not in_segment(state, both, offer, day, CONFIG)


def test_points_per_level_follow_the_offers_status_system():
    text = DEFAULT_CONFIG.read_text(encoding="utf-8").replace(
        "    action: {bonus_points: 500, expires_in_days: 30}",
        "    status_system: monthly_amount\n    action: {bonus_points: {silver: 300, gold: 700}}",
    )
    config = parse_config(text)
    gold = member(systems={"monthly_amount": SystemState(level="gold", base_level="gold", period="2026-11")})
    bronze = member(systems={"monthly_amount": SystemState(level="bronze", base_level="bronze", period="2026-11")})
    (grant,) = run_campaigns(gold, date(2026, 11, 25), config)
    assert (grant.value["points"], grant.value["expires_at"]) == (700, None)
    assert run_campaigns(bronze, date(2026, 11, 25), config) == []


# --- status at risk ---------------------------------------------------------------------------


def gold_member(amount: str, period: str = "2026-11") -> CustomerState:
    from decimal import Decimal

    systems = {"monthly_amount": SystemState(level="gold", base_level="gold", period=period, amount=Decimal(amount))}
    return member(systems=systems)


def test_what_keeps_a_level_under_each_downgrade_policy():
    from decimal import Decimal

    from models.levels import to_keep
    from tests.unit.test_engine import config_with

    system = CONFIG.system("monthly_amount")
    assert to_keep(system, "gold", "gold", Decimal("160.00")) == Decimal("40.01")
    assert to_keep(system, "gold", "gold", Decimal("200.01")) is None
    assert to_keep(system, "silver", "silver", Decimal("0")) == Decimal("100.01")
    one_step = config_with("one_step").system("monthly_amount")
    assert to_keep(one_step, "gold", "gold", Decimal("10.00")) == Decimal("190.01")  # silver is as low as it goes
    never = config_with("never").system("monthly_amount")
    assert to_keep(never, "gold", "gold", Decimal("0")) is None


def test_a_gold_member_short_of_200_in_the_last_week_gets_one_notice():
    from models.campaigns import at_risk_notices

    state = gold_member("160.00")
    assert at_risk_notices(state, date(2026, 11, 23), CONFIG) == []  # eight days left: not yet
    (notice,) = at_risk_notices(state, date(2026, 11, 24), CONFIG)
    value = notice.value
    assert (value["direction"], value["reason"], value["previous"], value["current"]) == (
        "at_risk",
        "at_risk",
        "gold",
        "silver",
    )
    assert (value["counter"], value["keep_remaining"], value["period"]) == ("160.00", "40.01", "2026-11")
    assert value["effective_from"] == "2026-12-01T00:00:00+01:00"
    assert at_risk_notices(state, date(2026, 11, 25), CONFIG) == []  # once per period
    assert at_risk_notices(gold_member("250.00"), date(2026, 11, 24), CONFIG) == []  # safe
    assert at_risk_notices(gold_member("160.00", period="2026-10"), date(2026, 11, 24), CONFIG) == []  # stale


def test_receipts_in_the_last_week_say_what_keeps_the_level():
    from models.engine import apply_receipt
    from tests.unit.test_engine import message, sale

    state = gold_member("100.00")
    state.customer_id = "C-42"
    early = apply_receipt(state, sale("R-1", "2026-11-20T12:00:00+01:00", "20.00"), CONFIG)
    assert not any("to keep" in line for line in message(early)["lines"])
    late = apply_receipt(early.state, sale("R-2", "2026-11-28T12:00:00+01:00", "20.00"), CONFIG)
    assert "Spend 60.01 EUR more by 30 November to keep Gold" in message(late)["lines"]
    safe = apply_receipt(late.state, sale("R-3", "2026-11-29T12:00:00+01:00", "70.00"), CONFIG)
    assert not any("to keep" in line for line in message(safe)["lines"])


def test_a_daily_run_decodes_only_customers_it_may_concern():
    from models.campaigns import worth_a_look

    without_notices = parse_config(DEFAULT_CONFIG.read_text(encoding="utf-8").replace("    at_risk_days: 7\n", ""))
    assert worth_a_look(member().to_bytes(), without_notices)
    assert not worth_a_look(member(birth=None).to_bytes(), without_notices)
    assert worth_a_look(member(birth=None).to_bytes(), CONFIG)  # anyone may be at risk
