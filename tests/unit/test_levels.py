"""Level arithmetic, replaying the two tables of the status-system document row by row."""

from __future__ import annotations

import functools
from decimal import Decimal

import pytest

from config.loading import DEFAULT_CONFIG, load_config, parse_config
from models.levels import direction, earned_level, level_after_close, next_target
from models.schema import DowngradePolicy

CONFIG = load_config()
AMOUNT = CONFIG.system("monthly_amount")
COUNT = CONFIG.system("monthly_count")
SHIPPED_TEXT = DEFAULT_CONFIG.read_text(encoding="utf-8")


@functools.cache
def with_downgrade(policy: str):
    """The shipped configuration with both status systems using `policy`."""
    text = SHIPPED_TEXT.replace("downgrade: recompute", f"downgrade: {policy}")
    assert text.count(f"downgrade: {policy}") == 2
    return parse_config(text)


# --- Example 1: amount of purchases per month -----------------------------------------------


@pytest.mark.parametrize(
    ("counter", "level"),
    [
        ("0", "bronze"),
        ("0.01", "bronze"),
        ("99.99", "bronze"),
        ("100", "bronze"),
        ("100.00", "bronze"),  # "more than €100": exactly 100 is not enough
        ("100.01", "silver"),
        ("150.00", "silver"),
        ("199.99", "silver"),
        ("200.00", "silver"),
        ("200.01", "gold"),
        ("10000", "gold"),
    ],
)
def test_amount_table(counter, level):
    assert earned_level(AMOUNT, Decimal(counter)).id == level


def test_amount_table_names_and_privileges():
    rows = [(lv.id, lv.name, lv.above, lv.privileges.discount_percent) for lv in AMOUNT.levels]
    assert rows == [
        ("bronze", "Bronze", None, Decimal(2)),
        ("silver", "Silver", Decimal(100), Decimal(5)),
        ("gold", "Gold", Decimal(200), Decimal(10)),
    ]
    assert [lv.privileges.model_extra["favorite_products"] for lv in AMOUNT.levels] == [2, 4, 7]


# --- Example 2: number of purchases per month -----------------------------------------------


@pytest.mark.parametrize(
    ("count", "level"),
    [
        (0, "basic"),
        (4, "basic"),
        (5, "basic"),  # "more than 5 purchases"
        (6, "favorite"),
        (14, "favorite"),
        (15, "favorite"),
        (16, "shopaholic"),
        (24, "shopaholic"),
        (25, "shopaholic"),
        (26, "pro"),
        (100, "pro"),
    ],
)
def test_count_table(count, level):
    assert earned_level(COUNT, Decimal(count)).id == level


def test_count_table_names_and_privileges():
    rows = [(lv.id, lv.name, lv.above, lv.privileges.discount_percent) for lv in COUNT.levels]
    assert rows == [
        ("basic", "Basic", None, Decimal(0)),
        ("favorite", "Favorite customer", Decimal(5), Decimal(5)),
        ("shopaholic", "Shopaholic", Decimal(15), Decimal(10)),
        ("pro", "PRO", Decimal(25), Decimal(15)),
    ]


# --- downgrade policies ---------------------------------------------------------------------

AMOUNT_LEVELS = ["bronze", "silver", "gold"]
COUNT_LEVELS = ["basic", "favorite", "shopaholic", "pro"]


@pytest.mark.parametrize("base", AMOUNT_LEVELS)
@pytest.mark.parametrize(
    ("counter", "earned"),
    [("0", "bronze"), ("100.00", "bronze"), ("100.01", "silver"), ("200.00", "silver"), ("200.01", "gold")],
)
def test_recompute_amount(base, counter, earned):
    system = with_downgrade("recompute").system("monthly_amount")
    assert system.downgrade is DowngradePolicy.RECOMPUTE
    assert level_after_close(system, base, Decimal(counter)).id == earned


@pytest.mark.parametrize(
    ("base", "counter", "expected"),
    [
        ("bronze", "0", "bronze"),
        ("bronze", "150", "silver"),
        ("bronze", "250", "gold"),
        ("silver", "0", "bronze"),
        ("silver", "100.00", "bronze"),
        ("silver", "150", "silver"),
        ("silver", "250", "gold"),
        ("gold", "0", "silver"),  # at most one step down
        ("gold", "100.00", "silver"),
        ("gold", "150", "silver"),
        ("gold", "200.00", "silver"),
        ("gold", "200.01", "gold"),
    ],
)
def test_one_step_amount(base, counter, expected):
    system = with_downgrade("one_step").system("monthly_amount")
    assert system.downgrade is DowngradePolicy.ONE_STEP
    assert level_after_close(system, base, Decimal(counter)).id == expected


@pytest.mark.parametrize(
    ("base", "count", "expected"),
    [
        ("basic", 0, "basic"),
        ("basic", 26, "pro"),  # upgrades may jump several levels
        ("favorite", 0, "basic"),
        ("shopaholic", 0, "favorite"),
        ("shopaholic", 5, "favorite"),
        ("shopaholic", 16, "shopaholic"),
        ("pro", 0, "shopaholic"),
        ("pro", 6, "shopaholic"),
        ("pro", 25, "shopaholic"),
        ("pro", 26, "pro"),
    ],
)
def test_one_step_count(base, count, expected):
    system = with_downgrade("one_step").system("monthly_count")
    assert level_after_close(system, base, Decimal(count)).id == expected


@pytest.mark.parametrize("base", AMOUNT_LEVELS)
@pytest.mark.parametrize("counter", ["0", "100.00", "100.01", "200.00", "200.01"])
def test_never_amount(base, counter):
    system = with_downgrade("never").system("monthly_amount")
    assert system.downgrade is DowngradePolicy.NEVER
    earned = earned_level(system, Decimal(counter)).id
    expected = max(earned, base, key=AMOUNT_LEVELS.index)
    assert level_after_close(system, base, Decimal(counter)).id == expected


@pytest.mark.parametrize(
    ("base", "count", "expected"),
    [
        ("basic", 0, "basic"),
        ("basic", 16, "shopaholic"),
        ("favorite", 0, "favorite"),
        ("shopaholic", 6, "shopaholic"),
        ("shopaholic", 26, "pro"),
        ("pro", 0, "pro"),
    ],
)
def test_never_count(base, count, expected):
    system = with_downgrade("never").system("monthly_count")
    assert level_after_close(system, base, Decimal(count)).id == expected


@pytest.mark.parametrize("base", COUNT_LEVELS)
@pytest.mark.parametrize(("count", "earned"), [(0, "basic"), (6, "favorite"), (16, "shopaholic"), (26, "pro")])
def test_recompute_count(base, count, earned):
    assert level_after_close(COUNT, base, Decimal(count)).id == earned


def test_default_downgrade_is_recompute():
    text = SHIPPED_TEXT.replace("    downgrade: recompute\n", "", 1)
    assert "downgrade" in text  # only the first system lost its line
    config = parse_config(text)
    assert config.system("monthly_amount").downgrade is DowngradePolicy.RECOMPUTE


# --- next target ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counter", "target", "remaining"),
    [
        ("0", "silver", "100.01"),
        ("0.00", "silver", "100.01"),
        ("50.00", "silver", "50.01"),
        ("99.99", "silver", "0.02"),
        ("100.00", "silver", "0.01"),
        ("100.01", "gold", "100.00"),
        ("120.49", "gold", "79.52"),
        ("120.50", "gold", "79.51"),
        ("199.99", "gold", "0.02"),
        ("200.00", "gold", "0.01"),
    ],
)
def test_next_target_amount(counter, target, remaining):
    result = next_target(AMOUNT, "bronze", "bronze", Decimal(counter))
    assert result is not None
    assert result.level.id == target
    assert result.remaining == Decimal(remaining)
    # The promise holds: adding `remaining` earns the target, one cent less does not.
    assert earned_level(AMOUNT, Decimal(counter) + result.remaining).id == target
    assert earned_level(AMOUNT, Decimal(counter) + result.remaining - Decimal("0.01")).id != target


@pytest.mark.parametrize("counter", ["200.01", "350", "100000"])
def test_next_target_amount_none_at_the_top(counter):
    assert next_target(AMOUNT, "bronze", "bronze", Decimal(counter)) is None
    assert next_target(AMOUNT, "gold", "gold", Decimal(counter)) is None


@pytest.mark.parametrize(
    ("count", "target", "remaining"),
    [
        (0, "favorite", 6),
        (4, "favorite", 2),
        (5, "favorite", 1),
        (6, "shopaholic", 10),
        (15, "shopaholic", 1),
        (16, "pro", 10),
        (25, "pro", 1),
    ],
)
def test_next_target_count(count, target, remaining):
    result = next_target(COUNT, "basic", "basic", Decimal(count))
    assert result is not None
    assert result.level.id == target
    assert result.remaining == Decimal(remaining)
    assert earned_level(COUNT, Decimal(count) + result.remaining).id == target
    assert earned_level(COUNT, Decimal(count) + result.remaining - 1).id != target


@pytest.mark.parametrize("count", [26, 40])
def test_next_target_count_none_at_the_top(count):
    assert next_target(COUNT, "basic", "basic", Decimal(count)) is None


def test_next_target_for_an_instant_gold_customer_points_at_gold():
    # Gold now by an instant upgrade, earned Bronze last time: the goal is keeping Gold.
    result = next_target(AMOUNT, "gold", "bronze", Decimal("150.00"))
    assert result is not None
    assert (result.level.id, result.remaining) == ("gold", Decimal("50.01"))
    result = next_target(AMOUNT, "gold", "bronze", Decimal("0"))
    assert (result.level.id, result.remaining) == ("gold", Decimal("200.01"))
    assert next_target(AMOUNT, "gold", "bronze", Decimal("200.01")) is None


def test_next_target_follows_the_downgrade_policy():
    never = with_downgrade("never").system("monthly_amount")
    # A Gold customer under `never` keeps Gold whatever they spend: nothing to reach.
    assert next_target(never, "gold", "gold", Decimal(0)) is None
    silver = next_target(never, "silver", "silver", Decimal(0))
    assert (silver.level.id, silver.remaining) == ("gold", Decimal("200.01"))
    one_step = with_downgrade("one_step").system("monthly_amount")
    # Under one_step a Gold customer with nothing spent falls to Silver: Gold is the goal.
    target = next_target(one_step, "gold", "gold", Decimal(0))
    assert (target.level.id, target.remaining) == ("gold", Decimal("200.01"))


def test_direction():
    assert direction(AMOUNT, None, "bronze") == "assign"
    assert direction(AMOUNT, "bronze", "silver") == "upgrade"
    assert direction(AMOUNT, "bronze", "gold") == "upgrade"
    assert direction(AMOUNT, "gold", "silver") == "downgrade"
    assert direction(COUNT, "pro", "basic") == "downgrade"
