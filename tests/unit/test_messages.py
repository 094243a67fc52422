"""Every receipt-message metavariable, as the README's table describes it."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from config.loading import DEFAULT_CONFIG, parse_config
from models.messages import ChangeNote, anonymous_lines, purchase_lines
from models.state import SystemState

EVERY_VARIABLE = (
    "{status_name}|{status_id}|{system_name}|{discount_percent}|{favorite_products}|{counter}|"
    "{next_status_name}|{next_level_threshold}|{remaining}|{currency}|{period_name}|{next_period_name}|"
    "{period_end}|{days_left}|{purchase_count}|{purchase_amount}|{keep_remaining}|{keep_by}|"
    "{receipt_total}|{customer_id}|{store_id}"
)


def config_with(rules: str):
    base = DEFAULT_CONFIG.read_text(encoding="utf-8")
    head = base[: base.index("receipt_messages:")]
    return parse_config(head + "receipt_messages:\n" + rules)


COMMON = {"currency": "EUR", "receipt_total": "30.00", "customer_id": "C-1", "store_id": "S1"}
WHEN = datetime.fromisoformat("2026-11-25T10:00:00+01:00")


def test_every_variable_of_a_purchase_line() -> None:
    config = config_with(f'  - when: purchase\n    status_system: monthly_amount\n    text: "{EVERY_VARIABLE}"\n')
    # Gold now (an instant upgrade), 160.00 counted: next month's level would be Silver.
    state = SystemState(level="gold", base_level="silver", period="2026-11", amount=Decimal("160.00"), count=4)
    (line,) = purchase_lines(config, {"monthly_amount": state}, [], COMMON, WHEN)
    assert line.split("|") == [
        "Gold",
        "gold",
        "Amount of purchases per month",
        "10",
        "7",  # another privilege, under its own name
        "160.00",
        "Gold",  # the level worth reaching: the one held now, to keep it
        "200.00",
        "40.01",
        "EUR",
        "November",
        "December",
        "30 November",
        "6",  # 25 to 30 November, today included
        "4",
        "160.00",
        "40.01",
        "30 November",
        "30.00",
        "C-1",
        "S1",
    ]


def test_a_top_level_customer_skips_unless_top_level_rules_and_a_change_names_the_previous_level() -> None:
    config = config_with(
        '  - when: purchase\n    unless: top_level\n    text: "to {next_status_name}"\n'
        '  - when: status_upgraded\n    text: "{previous_status_name} -> {status_name} ({system_name})"\n'
    )
    state = SystemState(level="gold", base_level="gold", period="2026-11", amount=Decimal("250.00"))
    change = ChangeNote("monthly_amount", "silver", "gold", "upgrade")
    lines = purchase_lines(config, {"monthly_amount": state}, [change], COMMON, WHEN)
    assert lines == ["Silver -> Gold (Amount of purchases per month)"]


def test_a_count_system_speaks_in_purchases() -> None:
    config = config_with(
        '  - when: purchase\n    status_system: monthly_count\n    text: "{counter} {remaining} {next_status_name}"\n'
    )
    state = SystemState(level="basic", base_level="basic", period="2026-11", count=3)
    assert purchase_lines(config, {"monthly_count": state}, [], COMMON, WHEN) == ["3 3 Favorite customer"]


def test_anonymous_lines_know_only_the_receipt() -> None:
    config = config_with('  - when: anonymous\n    text: "{receipt_total} {currency} {status_name}."\n')
    assert anonymous_lines(config, COMMON) == ["30.00 EUR ."]


def test_each_configuration_renders_its_own_rules() -> None:
    # The rules are planned once per configuration object: one made after another, or after
    # many others, must not be rendered with an earlier one's plan.
    state = SystemState(level="silver", base_level="silver", period="2026-11", amount=Decimal("60.00"), count=2)
    for n in range(100):
        rule = f'  - when: purchase\n    status_system: monthly_amount\n    text: "{n} {{status_name}}"\n'
        config = config_with(rule)
        assert purchase_lines(config, {"monthly_amount": state}, [], COMMON, WHEN) == [f"{n} Silver"]


def test_a_counter_below_zero_is_printed_as_nothing_spent_and_remaining_counts_from_the_true_one() -> None:
    # A return of last month's receipt before this month's first sale: the counters are a debit.
    config = config_with(
        "  - when: purchase\n    status_system: monthly_amount\n"
        '    text: "{counter}|{purchase_amount}|{purchase_count}|{remaining}|{next_status_name}"\n'
        '  - when: purchase\n    status_system: monthly_count\n    text: "{counter}|{remaining}"\n'
    )
    amount = SystemState(level="bronze", base_level="bronze", period="2026-11", amount=Decimal("-52.00"), count=-1)
    count = SystemState(level="basic", base_level="basic", period="2026-11", amount=Decimal("-52.00"), count=-1)
    lines = purchase_lines(config, {"monthly_amount": amount, "monthly_count": count}, [], COMMON, WHEN)
    assert lines == ["0.00|0.00|0|152.01|Silver", "0|7"]


def test_a_template_is_filled_as_str_format_fills_it() -> None:
    # Texts are split once into literal parts and variables; braces written twice, a variable
    # named twice, a format spec or a conversion, and a change's previous level (empty on a
    # purchase line) come out as `str.format` makes them.
    texts = (
        "{{{status_name}}} {{literal}} {status_name}{status_name}",
        "[{status_name:>8}] [{remaining!r}] {currency}",
        "{previous_status_name}|{status_name}",
    )
    config = config_with(
        "".join(f"  - when: purchase\n    status_system: monthly_amount\n    text: '{text}'\n" for text in texts)
        + "  - when: status_changed\n    text: '{previous_status_name:<7}|{status_name}|{previous_status_name}'\n"
    )
    state = SystemState(level="silver", base_level="silver", period="2026-11", amount=Decimal("60.00"))
    change = ChangeNote("monthly_amount", "bronze", "silver", "upgrade")
    lines = purchase_lines(config, {"monthly_amount": state}, [change], COMMON, WHEN)
    assert lines == [
        "{Silver} {literal} SilverSilver",
        "[  Silver] ['40.01'] EUR",
        "|Silver",
        "Bronze |Silver|Bronze",
    ]
