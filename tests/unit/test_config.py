"""Configuration loading and `check-config` problems, each reported by path."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from config.loading import DEFAULT_CONFIG, load_config, parse_config
from models.errors import ConfigError
from models.periods import PeriodKind
from models.schema import CounterKind, DowngradePolicy
from models.state import CustomerState, SystemState
from models.views import status_view

SHIPPED = DEFAULT_CONFIG.read_text(encoding="utf-8")


def edit(*replacements: tuple[str, str]) -> str:
    text = SHIPPED
    for old, new in replacements:
        assert text.count(old) == 1, f"{old!r} must occur exactly once in the shipped config"
        text = text.replace(old, new)
    return text


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


# --- the shipped configuration ---------------------------------------------------------------


def test_shipped_config_loads():
    config = load_config()
    assert config.timezone == ZoneInfo("Europe/Berlin")
    assert config.currency == "EUR"
    assert config.period_close_grace == timedelta(hours=1)
    assert config.idle_close_after == timedelta(minutes=5)
    assert [s.id for s in config.status_systems] == ["monthly_amount", "monthly_count"]
    amount = config.system("monthly_amount")
    assert amount.counter is CounterKind.PURCHASE_AMOUNT
    assert amount.period is PeriodKind.MONTH
    assert amount.downgrade is DowngradePolicy.RECOMPUTE
    assert [(lv.id, lv.above) for lv in amount.levels] == [
        ("bronze", None),
        ("silver", Decimal(100)),
        ("gold", Decimal(200)),
    ]
    rule = amount.instant_upgrades[0]
    assert (rule.id, rule.when.single_purchase_above, rule.to, rule.until) == (
        "big_purchase",
        Decimal(100),
        "gold",
        "period_end",
    )
    count = config.system("monthly_count")
    assert count.counter is CounterKind.PURCHASE_COUNT
    assert [(lv.id, lv.above) for lv in count.levels] == [
        ("basic", None),
        ("favorite", Decimal(5)),
        ("shopaholic", Decimal(15)),
        ("pro", Decimal(25)),
    ]
    offers = {o.id: o for o in config.offers}
    assert offers["fifth_purchase_bonus"].every_nth_purchase == 5
    assert offers["fifth_purchase_bonus"].action.bonus_points == {"bronze": 100, "silver": 300, "gold": 500}
    assert offers["shopaholic_fifth_purchase_bonus"].action.bonus_points == {"shopaholic": 500}
    assert offers["amount_status_discount"].action.discount_percent == {
        "bronze": Decimal(2),
        "silver": Decimal(5),
        "gold": Decimal(10),
    }
    assert offers["birthday_bonus"].trigger == "birthday"
    assert offers["birthday_bonus"].action.expires_in_days == 30


def test_load_config_by_path_equals_default():
    assert load_config(DEFAULT_CONFIG) == load_config()
    assert parse_config(SHIPPED) == load_config()


def test_missing_file_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"{missing}: cannot read")


def test_config_is_frozen():
    config = load_config()
    with pytest.raises(ValidationError):
        config.currency = "USD"  # type: ignore[misc]


def test_fractional_threshold_stays_exact():
    config = parse_config(edit(("above: 100,", "above: 100.1,")))
    assert config.system("monthly_amount").levels[1].above == Decimal("100.1")


# --- problems by path ------------------------------------------------------------------------


def test_levels_not_ascending():
    text = edit(("Silver, above: 100,", "Silver, above: 200,"), ("Gold,   above: 200,", "Gold,   above: 150,"))
    assert problems_of(text) == ["status_systems[0].levels[2].above: must be greater than 200"]


def test_levels_equal_thresholds():
    text = edit(("above: 15,", "above: 5, "))
    assert problems_of(text) == ["status_systems[1].levels[2].above: must be greater than 5"]


def test_unknown_instant_upgrade_target():
    text = edit(("to: gold", "to: platinum"))
    assert problems_of(text) == ["status_systems[0].instant_upgrades[0].to: unknown level 'platinum'"]


def test_unknown_status_system_in_offer():
    text = edit(
        (
            "status_system: monthly_count\n    every_nth_purchase: 5\n    action: {discount_percent: {basic: 10}}",
            "status_system: yearly_amount\n    every_nth_purchase: 5\n    action: {discount_percent: {basic: 10}}",
        )
    )
    assert problems_of(text) == ["offers[2].status_system: unknown status system 'yearly_amount'"]


def test_offer_level_not_in_its_system():
    text = edit(("action: {bonus_points: {shopaholic: 500}}", "action: {bonus_points: {gold: 500}}"))
    assert problems_of(text) == ["offers[3].action.bonus_points.gold: not a level of 'monthly_count'"]


def test_unknown_template_metavariable():
    text = edit(("({discount_percent}% off)", "({discount}% off)"))
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("receipt_messages[0].text: unknown metavariable(s) discount; known: ")
    assert "discount_percent" in problems[0]


def test_broken_template():
    text = edit(("You are now {status_name}.", "You are now {status_name."))
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("receipt_messages[4].text: broken template")


@pytest.mark.parametrize("value", ["1 hour", "soon", "-5m", "1w", "''"])
def test_bad_duration(value):
    text = edit(("period_close_grace: 1h", f"period_close_grace: {value}"))
    assert problems_of(text) == ["period_close_grace: must be a duration like 30s, 5m, 1h or 2d"]


@pytest.mark.parametrize(
    ("value", "expected"), [("30s", timedelta(seconds=30)), ("2d", timedelta(days=2)), ("90", timedelta(seconds=90))]
)
def test_good_durations(value, expected):
    config = parse_config(edit(("idle_close_after: 5m", f"idle_close_after: {value}")))
    assert config.idle_close_after == expected


def test_bad_time_zone():
    text = edit(("timezone: Europe/Berlin", "timezone: Europe/Atlantis"))
    assert problems_of(text) == ["timezone: unknown time zone 'Europe/Atlantis'"]


def test_first_level_with_above():
    text = edit(("{id: basic,      name: Basic,", "{id: basic,      name: Basic, above: 1,"))
    assert problems_of(text) == [
        "status_systems[1].levels[0].above: the first level is where customers start and has no threshold"
    ]


def test_later_level_without_above():
    text = edit(("{id: silver, name: Silver, above: 100,", "{id: silver, name: Silver,"))
    assert problems_of(text) == ["status_systems[0].levels[1].above: required for every level but the first"]


def test_count_threshold_must_be_whole():
    text = edit(("above: 15,", "above: 15.5,"))
    assert problems_of(text) == ["status_systems[1].levels[2].above: a purchase_count counter needs a whole number"]


def test_duplicate_level_id():
    text = edit(("{id: gold,   name: Gold,", "{id: silver,   name: Gold,"))
    problems = problems_of(text)
    assert "status_systems[0].levels[2].id: duplicate level id 'silver'" in problems


def test_unknown_period_kind():
    text = SHIPPED.replace("period: month", "period: fortnight", 1)
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("status_systems[0].period: ")


def test_unknown_downgrade_policy():
    text = SHIPPED.replace("downgrade: recompute", "downgrade: sometimes", 1)
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("status_systems[0].downgrade: ")


def test_unknown_field_is_reported():
    text = edit(("currency: EUR", "currency: EUR\ncurrencey: EUR"))
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("currencey: ")


def test_not_yaml_and_not_a_mapping():
    assert problems_of("- a\n- b") == ["<config>: the top level must be a mapping"]
    problems = problems_of("timezone: [")
    assert len(problems) == 1
    assert problems[0].startswith("<config>: not valid YAML")


def test_several_problems_at_once_are_all_listed():
    text = edit(
        ("timezone: Europe/Berlin", "timezone: Mars/Olympus"),
        ("period_close_grace: 1h", "period_close_grace: soon"),
        ("Gold,   above: 200,", "Gold,   above: 90,"),
        ("above: 25,", "above: 15,"),
        ("({discount_percent}% off)", "({discount}% off)"),
    )
    problems = problems_of(text)
    assert problems[:4] == [
        "timezone: unknown time zone 'Mars/Olympus'",
        "period_close_grace: must be a duration like 30s, 5m, 1h or 2d",
        "status_systems[0].levels[2].above: must be greater than 100",
        "status_systems[1].levels[3].above: must be greater than 15",
    ]
    assert problems[4].startswith("receipt_messages[0].text: unknown metavariable(s) discount;")
    assert len(problems) == 5


def test_several_problems_in_one_status_system():
    text = edit(
        ("{id: bronze, name: Bronze,", "{id: bronze, name: Bronze, above: 50,"),
        ("Gold,   above: 200,", "Gold,   above: 90,"),
        ("to: gold", "to: platinum"),
    )
    assert problems_of(text) == [
        "status_systems[0].levels[0].above: the first level is where customers start and has no threshold",
        "status_systems[0].levels[2].above: must be greater than 100",
        "status_systems[0].instant_upgrades[0].to: unknown level 'platinum'",
    ]


def test_several_reference_problems_at_once():
    text = edit(
        (
            "status_system: monthly_count\n    every_nth_purchase: 5\n    action: {discount_percent: {basic: 10}}",
            "status_system: nope\n    every_nth_purchase: 5\n    action: {discount_percent: {basic: 10}}",
        ),
        ("action: {bonus_points: {shopaholic: 500}}", "action: {bonus_points: {gold: 500}}"),
    )
    assert problems_of(text) == [
        "offers[2].status_system: unknown status system 'nope'",
        "offers[3].action.bonus_points.gold: not a level of 'monthly_count'",
    ]


def test_config_error_message_lists_every_problem():
    text = edit(
        ("timezone: Europe/Berlin", "timezone: Mars/Olympus"), ("period_close_grace: 1h", "period_close_grace: x")
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    message = str(caught.value)
    assert "timezone: unknown time zone 'Mars/Olympus'" in message
    assert "period_close_grace: must be a duration" in message


def test_every_status_system_broken_lists_no_phantom_problem():
    text = edit(("Gold,   above: 200,", "Gold,   above: 90,"), ("above: 25,", "above: 15,"))
    assert problems_of(text) == [
        "status_systems[0].levels[2].above: must be greater than 100",
        "status_systems[1].levels[3].above: must be greater than 15",
    ]


def test_no_status_system_at_all():
    problems = problems_of("timezone: Europe/Berlin\ncurrency: EUR\nstatus_systems: []\n")
    assert len(problems) == 1
    assert problems[0].startswith("status_systems: ")


def test_a_level_s_privileges_are_metavariables_too():
    text = edit(("({discount_percent}% off)", "({discount_percent}% off, {favorite_products} favourites)"))
    assert parse_config(text).receipt_messages[0].variables == {"status_name", "discount_percent", "favorite_products"}
    unknown = edit(("({discount_percent}% off)", "({free_parking})"))
    (problem,) = problems_of(unknown)
    assert problem.startswith("receipt_messages[0].text: unknown metavariable(s) free_parking; known: ")
    assert "favorite_products" in problem


def test_a_privilege_must_be_text_a_number_or_a_flag():
    # A snapshot shows every privilege and a receipt line may name any: a list or a mapping
    # would fail there on every receipt, so the configuration is refused at start instead.
    text = edit(("favorite_products: 2}", "favorite_products: 2, tags: [a, b], limits: {x: 1}, odd: .nan, empty: }"))
    assert problems_of(text) == [
        "status_systems[0].levels[0].privileges.tags: must be text, a number or true/false, got list",
        "status_systems[0].levels[0].privileges.limits: must be text, a number or true/false, got dict",
        "status_systems[0].levels[0].privileges.odd: must be a finite number, got nan",
        "status_systems[0].levels[0].privileges.empty: must be text, a number or true/false, got nothing",
    ]


def test_a_fractional_privilege_is_shown_as_written():
    config = parse_config(edit(("favorite_products: 2}", "favorite_products: 2, speed: 2.5, fast: true}")))
    extra = config.system("monthly_amount").levels[0].privileges.model_extra
    assert extra == {"favorite_products": 2, "speed": Decimal("2.5"), "fast": True}
    state = CustomerState("C-1", systems={"monthly_amount": SystemState("bronze", "bronze", "2026-11")})
    (shown,) = status_view(state, config, caused_by="R-1", occurred_at="2026-11-25T10:00:00+01:00").value["statuses"]
    assert shown["privileges"] == {"discount_percent": 2, "favorite_products": 2, "speed": "2.5", "fast": True}
