"""The loyalty rules end to end on the pure core: receipts in, status changes, offers and messages out."""

from __future__ import annotations

import dataclasses
import functools
import json
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.loading import DEFAULT_CONFIG, load_config, parse_config
from models.engine import Result, apply_receipt, close_period, set_status
from models.errors import InvalidInput
from models.events import Output, OutputKind
from models.inputs import ClosePeriod, Receipt, SetStatus
from models.messages import ChangeNote, purchase_lines
from models.schema import ClientState, DowngradePolicy
from models.state import CustomerState, ReceiptRecord, SystemState

CONFIG = load_config()
CUSTOMER = "C-42"


@functools.cache
def config_with(policy: str):
    text = DEFAULT_CONFIG.read_text(encoding="utf-8").replace("downgrade: recompute", f"downgrade: {policy}")
    return parse_config(text)


def sale(
    receipt_id: str,
    issued_at: str,
    total: str,
    customer: str | None = CUSTOMER,
    card: str | None = None,
    *,
    pos: str = "POS7",
    store: str = "S1",
) -> Receipt:
    return Receipt(
        receipt_id=receipt_id,
        type="sale",
        customer_id=customer,
        card_number=card,
        pos_id=pos,
        store_id=store,
        issued_at=datetime.fromisoformat(issued_at),
        currency="EUR",
        total=Decimal(total),
    )


def refund(receipt_id: str, issued_at: str, total: str, original: str) -> Receipt:
    return Receipt(
        receipt_id=receipt_id,
        type="return",
        customer_id=CUSTOMER,
        card_number=None,
        pos_id="POS7",
        store_id="S1",
        issued_at=datetime.fromisoformat(issued_at),
        currency="EUR",
        total=Decimal(total),
        original_receipt_id=original,
    )


def feed(state, receipts, config=CONFIG):
    results = []
    for receipt in receipts:
        result = apply_receipt(state, receipt, config)
        for output in result.outputs:
            output.value  # noqa: B018 - read as it is published: a snapshot is made from the state of now
        state = result.state
        results.append(result)
    return state, results


def test_a_snapshot_read_after_the_state_moved_on_refuses_rather_than_lie():
    state, _ = feed(None, [sale("L-1", "2026-11-03T12:00:00+01:00", "10.00")])
    stale = apply_receipt(state, sale("L-2", "2026-11-04T12:00:00+01:00", "10.00"), CONFIG).outputs[-1]
    apply_receipt(state, sale("L-3", "2026-11-05T12:00:00+01:00", "10.00"), CONFIG)
    assert stale.kind is OutputKind.CUSTOMER_STATUS
    with pytest.raises(RuntimeError, match="read after the state moved on"):
        stale.value  # noqa: B018


def sales_in(month: str, totals, prefix: str = "R", day: int = 2) -> list[Receipt]:
    """One sale per total, an hour apart, in `month` (e.g. '2026-11')."""
    return [
        sale(f"{prefix}{month}-{i:03d}", f"{month}-{day + i // 24:02d}T{i % 24:02d}:00:00+01:00", str(total))
        for i, total in enumerate(totals)
    ]


def changes(result, system: str | None = None):
    return [
        o.value
        for o in result.outputs
        if o.kind is OutputKind.STATUS_CHANGE and (system is None or o.value["status_system"] == system)
    ]


def offers(result):
    return [o.value for o in result.outputs if o.kind is OutputKind.OFFER_TRIGGER]


def message(result):
    found = [o.value for o in result.outputs if o.kind is OutputKind.RECEIPT_MESSAGE]
    assert len(found) == 1
    return found[0]


def customer(amount_level: str, count_level: str = "basic", period: str = "2026-11") -> CustomerState:
    """A member who earned these levels at the last close and has bought nothing yet this period."""
    return CustomerState(
        customer_id=CUSTOMER,
        systems={
            "monthly_amount": SystemState(amount_level, amount_level, period, reason="period_close"),
            "monthly_count": SystemState(count_level, count_level, period, reason="period_close"),
        },
    )


# --- first receipt ---------------------------------------------------------------------------


def test_first_receipt_assigns_the_first_levels():
    state, [result] = feed(None, [sale("R1", "2026-11-03T12:00:00+01:00", "20.00")])
    assert [
        (c["status_system"], c["previous"], c["current"], c["direction"], c["reason"]) for c in changes(result)
    ] == [
        ("monthly_amount", None, "bronze", "assign", "initial"),
        ("monthly_count", None, "basic", "assign", "initial"),
    ]
    assign = changes(result)[0]
    assert assign["counter"] == "0.00"
    assert assign["period"] == "2026-11"
    assert assign["effective_from"] == "2026-11-03T12:00:00+01:00"
    assert assign["caused_by"] == "R1"
    assert changes(result)[1]["counter"] == "0"
    assert state.systems["monthly_amount"].amount == Decimal("20.00")
    assert state.systems["monthly_count"].count == 1
    assert message(result)["lines"] == [
        "Your status: Bronze (2% off)",
        "Spend 80.01 EUR more in November to be Silver in December",
        "5 more purchases in November make you Favorite customer in December",
    ]


# --- month boundary --------------------------------------------------------------------------


def test_customer_at_150_in_november_is_silver_on_the_first_december_receipt():
    state, _ = feed(None, sales_in("2026-11", ["75.00", "75.00"]))
    state, [december] = feed(state, [sale("POS7-000200", "2026-12-01T09:00:00+01:00", "10.00")])
    assert changes(december) == [
        {
            "event_id": changes(december)[0]["event_id"],
            "customer_id": CUSTOMER,
            "status_system": "monthly_amount",
            "previous": "bronze",
            "current": "silver",
            "direction": "upgrade",
            "reason": "period_close",
            "effective_from": "2026-12-01T00:00:00+01:00",
            "valid_until": None,
            "counter": "150.00",
            "period": "2026-11",
            "caused_by": "POS7-000200",
            "occurred_at": "2026-12-01T00:00:00+01:00",
        }
    ]
    assert not december.late and not december.duplicate
    amount = state.systems["monthly_amount"]
    assert (amount.level, amount.base_level, amount.period, amount.amount, amount.count) == (
        "silver",
        "silver",
        "2026-12",
        Decimal("10.00"),
        1,
    )
    assert (amount.closed_period, amount.closed_amount, amount.closed_count) == ("2026-11", Decimal("150.00"), 2)
    # The December receipt already gets the Silver discount.
    assert [(o["offer_id"], o["percent"], o["amount"]) for o in offers(december)] == [
        ("amount_status_discount", 5, "0.50")
    ]
    assert message(december)["lines"] == [
        "Your status: Silver (5% off)",
        "Spend 90.01 EUR more in December to be Silver in January",
        "5 more purchases in December make you Favorite customer in January",
        "Congratulations! You are now Silver.",
    ]


def test_december_receipt_just_after_midnight_utc_offset():
    # 23:30 UTC on 30 November is already December in Berlin: it closes November.
    state, _ = feed(None, sales_in("2026-11", ["75.00", "75.00"]))
    state, [result] = feed(state, [sale("R-UTC", "2026-11-30T23:30:00+00:00", "1.00")])
    assert [c["current"] for c in changes(result)] == ["silver"]
    assert state.systems["monthly_amount"].period == "2026-12"


def test_last_second_of_november_still_counts_in_november():
    state, _ = feed(None, sales_in("2026-11", ["75.00"]))
    state, [last] = feed(state, [sale("R-LAST", "2026-11-30T23:59:59+01:00", "25.01")])
    assert changes(last) == []
    assert state.systems["monthly_amount"].amount == Decimal("100.01")
    state, [first] = feed(state, [sale("R-FIRST", "2026-12-01T00:00:00+01:00", "1.00")])
    assert [(c["current"], c["counter"], c["effective_from"]) for c in changes(first)] == [
        ("silver", "100.01", "2026-12-01T00:00:00+01:00")
    ]


def test_year_boundary_closes_december():
    state, _ = feed(None, sales_in("2026-12", ["70.00", "70.00", "60.01"]))
    state, [result] = feed(state, [sale("R-NY", "2027-01-01T00:00:00+01:00", "1.00")])
    assert [(c["current"], c["counter"], c["period"], c["effective_from"]) for c in changes(result)] == [
        ("gold", "200.01", "2026-12", "2027-01-01T00:00:00+01:00")
    ]
    assert state.systems["monthly_amount"].period == "2027-01"


@pytest.mark.parametrize(
    ("totals", "level", "counter"),
    [
        (["50.00", "49.99"], "bronze", "99.99"),
        (["50.00", "50.00"], "bronze", "100.00"),
        (["50.00", "50.01"], "silver", "100.01"),
        (["100.00", "100.00"], "silver", "200.00"),
        (["70.00", "70.00", "60.01"], "gold", "200.01"),
    ],
)
def test_amount_thresholds_via_receipts(totals, level, counter):
    state, _ = feed(None, sales_in("2026-11", totals))
    assert state.systems["monthly_amount"].level == "bronze"  # no single purchase over 100
    state, [result] = feed(state, [sale("DEC-1", "2026-12-02T10:00:00+01:00", "1.00")])
    assert state.systems["monthly_amount"].level == level
    found = changes(result, "monthly_amount")
    if level == "bronze":
        assert found == []
    else:
        assert [(c["previous"], c["current"], c["counter"]) for c in found] == [("bronze", level, counter)]


@pytest.mark.parametrize(
    ("purchases", "level"),
    [(5, "basic"), (6, "favorite"), (15, "favorite"), (16, "shopaholic"), (25, "shopaholic"), (26, "pro")],
)
def test_count_thresholds_via_receipts(purchases, level):
    state, _ = feed(None, sales_in("2026-11", ["1.00"] * purchases))
    assert state.systems["monthly_count"].count == purchases
    state, [result] = feed(state, [sale("DEC-1", "2026-12-02T10:00:00+01:00", "1.00")])
    assert state.systems["monthly_count"].level == level
    found = changes(result, "monthly_count")
    if level == "basic":
        assert found == []
    else:
        assert [(c["previous"], c["current"], c["counter"], c["period"]) for c in found] == [
            ("basic", level, str(purchases), "2026-11")
        ]


# --- instant upgrade -------------------------------------------------------------------------


def test_single_purchase_over_100_is_gold_at_once_until_the_month_ends():
    state, [result] = feed(None, [sale("BIG", "2026-11-03T12:00:00+01:00", "100.01")])
    instant = [c for c in changes(result) if c["reason"] == "instant_rule"]
    assert instant == [
        {
            "event_id": instant[0]["event_id"],
            "customer_id": CUSTOMER,
            "status_system": "monthly_amount",
            "previous": "bronze",
            "current": "gold",
            "direction": "upgrade",
            "reason": "instant_rule",
            "effective_from": "2026-11-03T12:00:00+01:00",
            "valid_until": "2026-12-01T00:00:00+01:00",
            "counter": "100.01",
            "period": "2026-11",
            "caused_by": "BIG",
            "occurred_at": "2026-11-03T12:00:00+01:00",
        }
    ]
    amount = state.systems["monthly_amount"]
    assert (amount.level, amount.base_level, amount.reason, amount.valid_until) == (
        "gold",
        "bronze",
        "instant_rule",
        "2026-12-01T00:00:00+01:00",
    )
    assert message(result)["lines"] == [
        "Your status: Gold (10% off)",
        "Spend 100.00 EUR more in November to be Gold in December",
        "5 more purchases in November make you Favorite customer in December",
        "Congratulations! You are now Gold.",
    ]
    # At the close the normal rule decides: 100.01 earns Silver.
    state, [december] = feed(state, [sale("DEC-1", "2026-12-01T08:00:00+01:00", "1.00")])
    assert [(c["previous"], c["current"], c["direction"], c["reason"], c["counter"]) for c in changes(december)] == [
        ("gold", "silver", "downgrade", "period_close", "100.01")
    ]
    amount = state.systems["monthly_amount"]
    assert (amount.level, amount.base_level, amount.reason, amount.valid_until) == (
        "silver",
        "silver",
        "period_close",
        None,
    )


def test_instant_gold_that_earns_gold_keeps_it_silently_at_the_close():
    state, _ = feed(None, sales_in("2026-11", ["150.00", "60.00"]))
    assert state.systems["monthly_amount"].level == "gold"
    state, [december] = feed(state, [sale("DEC-1", "2026-12-01T08:00:00+01:00", "1.00")])
    assert changes(december) == []
    amount = state.systems["monthly_amount"]
    assert (amount.level, amount.base_level, amount.valid_until) == ("gold", "gold", None)


def test_instant_gold_that_earned_nothing_falls_back_to_bronze():
    state, _ = feed(None, [sale("BIG", "2026-10-30T12:00:00+01:00", "100.01")])
    state, [result] = feed(state, [sale("NOV", "2026-11-02T12:00:00+01:00", "5.00")])
    # October's 100.01 earns Silver; the Gold of the instant rule ends.
    assert [(c["previous"], c["current"]) for c in changes(result, "monthly_amount")] == [("gold", "silver")]


def test_a_purchase_of_exactly_100_does_not_trigger_the_instant_upgrade():
    state, [result] = feed(None, [sale("R100", "2026-11-03T12:00:00+01:00", "100.00")])
    assert [c["reason"] for c in changes(result)] == ["initial", "initial"]
    assert state.systems["monthly_amount"].level == "bronze"


def test_a_gold_customer_gets_no_instant_upgrade():
    state = customer("gold")
    state, [result] = feed(state, [sale("BIG", "2026-11-03T12:00:00+01:00", "150.00")])
    assert changes(result) == []
    assert state.systems["monthly_amount"].reason == "period_close"


def test_silver_customer_is_upgraded_to_gold_instantly():
    state = customer("silver")
    state, [result] = feed(state, [sale("BIG", "2026-11-03T12:00:00+01:00", "120.50")])
    assert [(c["previous"], c["current"], c["reason"]) for c in changes(result)] == [("silver", "gold", "instant_rule")]
    assert message(result)["lines"][:2] == [
        "Your status: Gold (10% off)",
        "Spend 79.51 EUR more in November to be Gold in December",
    ]


# --- purchase offers -------------------------------------------------------------------------


def bonus_points(result):
    return [(o["offer_id"], o["points"]) for o in offers(result) if o["action"] == "bonus_points"]


@pytest.mark.parametrize(("level", "points"), [("bronze", 100), ("silver", 300), ("gold", 500)])
def test_every_fifth_purchase_bonus_by_level(level, points):
    _state, results = feed(customer(level), sales_in("2026-11", ["10.00"] * 11))
    by_number = {n: bonus_points(r) for n, r in enumerate(results, start=1)}
    assert by_number[5] == [("fifth_purchase_bonus", points)]
    assert by_number[10] == [("fifth_purchase_bonus", points)]
    assert all(by_number[n] == [] for n in (1, 2, 3, 4, 6, 7, 8, 9, 11))
    fifth = next(o for o in offers(results[4]) if o["offer_id"] == "fifth_purchase_bonus")
    assert fifth == {
        "event_id": fifth["event_id"],
        "customer_id": CUSTOMER,
        "offer_id": "fifth_purchase_bonus",
        "action": "bonus_points",
        "points": points,
        "expires_at": None,
        "receipt_id": "R2026-11-004",
        "caused_by": "R2026-11-004",
        "occurred_at": "2026-11-02T04:00:00+01:00",
    }


def test_fifth_purchase_bonus_earned_through_last_month():
    # Silver through October's 120.00, then five November purchases.
    state, _ = feed(None, sales_in("2026-10", ["60.00", "60.00"]))
    state, results = feed(state, sales_in("2026-11", ["10.00"] * 5))
    assert [bonus_points(r) for r in results] == [[], [], [], [], [("fifth_purchase_bonus", 300)]]


def test_fifth_purchase_counts_only_this_period():
    state, _ = feed(customer("bronze"), sales_in("2026-11", ["10.00"] * 3))
    state, results = feed(state, sales_in("2026-12", ["10.00"] * 5))
    assert [bonus_points(r) for r in results][:4] == [[], [], [], []]
    assert bonus_points(results[4]) == [("fifth_purchase_bonus", 100)]


def test_fifth_purchase_bonus_only_for_registered_members():
    state = customer("silver")
    state.client_state = ClientState.NEW
    state, results = feed(state, sales_in("2026-11", ["10.00"] * 5))
    assert bonus_points(results[4]) == []
    # The Basic fifth-purchase discount has no client-state filter.
    assert [o["offer_id"] for o in offers(results[4])] == ["amount_status_discount", "basic_fifth_purchase_discount"]


def test_shopaholic_gets_500_points_every_fifth_purchase():
    _state, results = feed(customer("bronze", "shopaholic"), sales_in("2026-11", ["10.00"] * 10))
    assert bonus_points(results[4]) == [("fifth_purchase_bonus", 100), ("shopaholic_fifth_purchase_bonus", 500)]
    assert bonus_points(results[9]) == [("fifth_purchase_bonus", 100), ("shopaholic_fifth_purchase_bonus", 500)]
    assert bonus_points(results[3]) == []


def test_shopaholic_through_sixteen_purchases_last_month():
    state, _ = feed(None, sales_in("2026-10", ["1.00"] * 16))
    state, results = feed(state, sales_in("2026-11", ["10.00"] * 5))
    assert ("shopaholic_fifth_purchase_bonus", 500) in bonus_points(results[4])
    assert all(("shopaholic_fifth_purchase_bonus", 500) not in bonus_points(r) for r in results[:4])


def test_basic_gets_ten_percent_off_every_fifth_purchase():
    _state, results = feed(customer("bronze", "basic"), sales_in("2026-11", ["12.35"] * 10))
    basic = [
        [(o["percent"], o["amount"]) for o in offers(r) if o["offer_id"] == "basic_fifth_purchase_discount"]
        for r in results
    ]
    assert basic == [[], [], [], [], [(10, "1.24")], [], [], [], [], [(10, "1.24")]]  # 1.235 rounds half up


def test_favorite_gets_no_basic_discount():
    _state, results = feed(customer("bronze", "favorite"), sales_in("2026-11", ["10.00"] * 5))
    assert [o["offer_id"] for o in offers(results[4])] == [
        "fifth_purchase_bonus",
        "amount_status_discount",
        "count_status_discount",
    ]


@pytest.mark.parametrize(
    ("amount_level", "count_level", "total", "expected"),
    [
        ("bronze", "basic", "10.25", [("amount_status_discount", 2, "0.21")]),  # 0.205 -> 0.21
        ("silver", "basic", "10.10", [("amount_status_discount", 5, "0.51")]),  # 0.505 -> 0.51
        ("gold", "basic", "10.05", [("amount_status_discount", 10, "1.01")]),  # 1.005 -> 1.01
        ("bronze", "basic", "0.24", [("amount_status_discount", 2, "0.00")]),  # 0.0048 -> 0.00
        ("bronze", "basic", "0.25", [("amount_status_discount", 2, "0.01")]),  # 0.005 -> 0.01
        (
            "gold",
            "pro",
            "33.33",
            [("amount_status_discount", 10, "3.33"), ("count_status_discount", 15, "5.00")],  # 4.9995 -> 5.00
        ),
        (
            "silver",
            "favorite",
            "99.90",
            [("amount_status_discount", 5, "5.00"), ("count_status_discount", 5, "5.00")],  # 4.995 -> 5.00
        ),
        (
            "bronze",
            "shopaholic",
            "0.05",
            [("amount_status_discount", 2, "0.00"), ("count_status_discount", 10, "0.01")],  # 0.005 -> 0.01
        ),
    ],
)
def test_status_discount_amounts(amount_level, count_level, total, expected):
    _state, [result] = feed(customer(amount_level, count_level), [sale("R1", "2026-11-03T12:00:00+01:00", total)])
    assert [(o["offer_id"], o["percent"], o["amount"]) for o in offers(result)] == expected
    for o in offers(result):
        assert o["action"] == "discount"
        assert (o["receipt_id"], o["caused_by"]) == ("R1", "R1")


# --- duplicates and determinism --------------------------------------------------------------


def _message_and_snapshot(outputs: list[Output]) -> list[Output]:
    return [o for o in outputs if o.kind in (OutputKind.RECEIPT_MESSAGE, OutputKind.CUSTOMER_STATUS)]


def test_duplicate_receipt_counts_once_and_repeats_its_message():
    state, [first] = feed(customer("silver"), [sale("R1", "2026-11-03T12:00:00+01:00", "120.00")])
    before = state.to_bytes()
    again = apply_receipt(state, sale("R1", "2026-11-03T12:00:00+01:00", "120.00"), CONFIG)
    assert again.duplicate is True
    assert again.late is False
    assert again.state.to_bytes() == before
    assert state.systems["monthly_amount"].amount == Decimal("120.00")
    # The first time also gave an instant upgrade and offers; those were delivered before the
    # state that remembers R1 was stored, so only the till's message and the snapshot come again.
    assert {o.kind for o in first.outputs} > {OutputKind.RECEIPT_MESSAGE, OutputKind.CUSTOMER_STATUS}
    repeated = _message_and_snapshot(first.outputs)
    assert [(o.kind, o.key, o.value) for o in again.outputs] == [(o.kind, o.key, o.value) for o in repeated]


def test_duplicate_after_a_restart_repeats_its_message():
    state, [first] = feed(None, [sale("R1", "2026-11-03T12:00:00+01:00", "150.00")])
    restored = CustomerState.from_bytes(state.to_bytes())
    again = apply_receipt(restored, sale("R1", "2026-11-03T12:00:00+01:00", "150.00"), CONFIG)
    assert again.duplicate
    repeated = _message_and_snapshot(first.outputs)
    assert [(o.kind, o.key, o.value) for o in again.outputs] == [(o.kind, o.key, o.value) for o in repeated]


def test_a_replayed_state_stores_its_messages_unrendered_and_a_resend_renders_them_as_sent_live():
    """A replay keeps its latest receipts' messages as what they are rendered from ("rl"), and a
    worker that reads that state back renders a resend's message as the live rules made it the
    first time: the instant upgrade's note, the counters of then, the store and total of each."""
    text = DEFAULT_CONFIG.read_text(encoding="utf-8").replace(
        "receipt_messages:\n",
        "receipt_messages:\n  - when: purchase\n    status_system: monthly_count\n"
        '    text: "{customer_id} at {store_id}: {receipt_total} {currency}, {purchase_count} this month"\n',
    )
    config = parse_config(text)
    receipts = [
        sale("R1", "2026-11-03T12:00:00+01:00", "40.00"),
        sale("R2", "2026-11-04T12:00:00+01:00", "120.00"),  # over 100: Gold at once, noted on this receipt
        sale("R3", "2026-11-05T12:00:00+01:00", "7.50", pos="POS8", store="S9"),
    ]
    _, live = feed(customer("bronze"), receipts, config)
    replayed = customer("bronze")
    for receipt in receipts:
        replayed = apply_receipt(replayed, receipt, config, lines_when_read=True, state_only=True).state
    raw = replayed.to_bytes()
    stored = json.loads(raw)
    assert stored["ro"] == {} and sorted(stored["rl"]) == ["R1", "R2", "R3"]
    assert b"lines" not in raw  # nothing rendered to store it
    assert CustomerState.from_bytes(raw).to_bytes() == raw  # read back and stored again, still unrendered
    assert any("Gold" in line for line in message(live[1])["lines"])
    assert f"{CUSTOMER} at S9: 7.50 EUR, 3 this month" in message(live[2])["lines"]
    for receipt, first in zip(receipts, live, strict=True):
        again = apply_receipt(CustomerState.from_bytes(raw), receipt, config)
        assert again.duplicate
        assert message(again) == message(first)


def test_a_state_stored_by_the_previous_version_keeps_its_messages():
    state, [first] = feed(None, [sale("R1", "2026-11-03T12:00:00+01:00", "150.00")])
    old = json.loads(state.to_bytes())
    old["ro"] = {"R1": [{"k": o.kind.value, "key": o.key, "v": o.value} for o in first.outputs[:-1]]}
    again = apply_receipt(
        CustomerState.from_bytes(json.dumps(old).encode()), sale("R1", "2026-11-03T12:00:00+01:00", "150.00"), CONFIG
    )
    assert [o.value for o in again.outputs] == [o.value for o in _message_and_snapshot(first.outputs)]


def test_old_duplicate_still_counts_once():
    receipts = sales_in("2026-11", ["10.00"] * 6)
    state, _ = feed(None, receipts)
    before = state.to_bytes()
    again = apply_receipt(state, receipts[0], CONFIG)
    assert again.duplicate
    assert again.state.to_bytes() == before
    assert state.systems["monthly_count"].count == 6


def test_event_ids_are_deterministic_and_unique():
    receipts = [
        *sales_in("2026-11", ["60.00", "150.00", "10.00", "10.00", "10.00"]),
        sale("DEC-1", "2026-12-01T09:00:00+01:00", "5.00"),
        refund("DEC-RET", "2026-12-02T09:00:00+01:00", "5.00", "DEC-1"),
    ]
    _, run_one = feed(None, receipts)
    _, run_two = feed(None, receipts)
    one = [(o.kind, o.key, o.value) for r in run_one for o in r.outputs]
    two = [(o.kind, o.key, o.value) for r in run_two for o in r.outputs]
    assert one == two
    ids = [value["event_id"] for _, _, value in one]
    assert len(ids) == len(set(ids))


def test_period_close_event_id_does_not_depend_on_what_closed_it():
    base, _ = feed(None, sales_in("2026-11", ["75.00", "75.00"]))
    by_receipt = apply_receipt(
        CustomerState.from_bytes(base.to_bytes()), sale("X", "2026-12-01T09:00:00+01:00", "1.00"), CONFIG
    )
    by_command = close_period(
        CustomerState.from_bytes(base.to_bytes()), ClosePeriod("CMD", "monthly_amount", "2026-11"), CONFIG
    )
    assert changes(by_receipt)[0]["event_id"] == changes(by_command)[0]["event_id"]
    assert changes(by_command)[0]["caused_by"] == "CMD"


# --- close_period ----------------------------------------------------------------------------


def test_close_period_for_a_customer_who_bought_nothing_downgrades():
    state, _ = feed(None, sales_in("2026-10", ["75.00", "75.00"]))
    october = close_period(state, ClosePeriod("CC-1", "monthly_amount", "2026-10"), CONFIG)
    assert [
        (c["previous"], c["current"], c["direction"], c["counter"], c["effective_from"]) for c in changes(october)
    ] == [("bronze", "silver", "upgrade", "150.00", "2026-11-01T00:00:00+01:00")]
    november = close_period(state, ClosePeriod("CC-2", "monthly_amount", "2026-11"), CONFIG)
    assert changes(november) == [
        {
            "event_id": changes(november)[0]["event_id"],
            "customer_id": CUSTOMER,
            "status_system": "monthly_amount",
            "previous": "silver",
            "current": "bronze",
            "direction": "downgrade",
            "reason": "period_close",
            "effective_from": "2026-12-01T00:00:00+01:00",
            "valid_until": None,
            "counter": "0.00",
            "period": "2026-11",
            "caused_by": "CC-2",
            "occurred_at": "2026-12-01T00:00:00+01:00",
        }
    ]
    amount = state.systems["monthly_amount"]
    assert (amount.level, amount.base_level, amount.period) == ("bronze", "bronze", "2026-12")
    # The other system is left alone by a command naming one system.
    assert state.systems["monthly_count"].period == "2026-10"


def test_close_period_twice_changes_nothing_the_second_time():
    state, _ = feed(None, sales_in("2026-11", ["75.00", "75.00"]))
    first = close_period(state, ClosePeriod("CC-1", "monthly_amount", "2026-11"), CONFIG)
    snapshot = state.to_bytes()
    second = close_period(state, ClosePeriod("CC-1", "monthly_amount", "2026-11"), CONFIG)
    assert len(changes(first)) == 1
    assert second.outputs == []
    assert state.to_bytes() == snapshot


def test_close_period_of_an_earlier_period_is_a_no_op():
    state, _ = feed(None, sales_in("2026-11", ["75.00", "75.00"]))
    snapshot = state.to_bytes()
    result = close_period(state, ClosePeriod("CC-1", "monthly_amount", "2026-10"), CONFIG)
    assert result.outputs == []
    assert state.to_bytes() == snapshot


def test_close_period_for_a_customer_without_the_system():
    state = CustomerState(customer_id=CUSTOMER)
    result = close_period(state, ClosePeriod("CC-1", "monthly_amount", "2026-11"), CONFIG)
    assert result.outputs == [] and result.state is state


def test_recompute_skipping_months_drops_straight_to_bronze():
    state, _ = feed(None, sales_in("2026-10", ["70.00", "70.00", "70.00"]))
    state, [result] = feed(state, [sale("NOV", "2026-11-02T10:00:00+01:00", "1.00")])
    assert [c["current"] for c in changes(result, "monthly_amount")] == ["gold"]
    state, [result] = feed(state, [sale("FEB", "2027-02-10T10:00:00+01:00", "1.00")])
    assert [
        (c["previous"], c["current"], c["period"], c["counter"], c["effective_from"])
        for c in changes(result, "monthly_amount")
    ] == [("gold", "bronze", "2026-11", "1.00", "2026-12-01T00:00:00+01:00")]
    assert state.systems["monthly_amount"].period == "2027-02"


def test_one_step_goes_down_one_level_per_period_when_skipping_months():
    config = config_with("one_step")
    state, _ = feed(None, sales_in("2026-10", ["70.00", "70.00", "70.00"]), config)
    gold = close_period(state, ClosePeriod("CC-10", "monthly_amount", "2026-10"), config)
    assert [c["current"] for c in changes(gold)] == ["gold"]
    state, [result] = feed(state, [sale("FEB", "2027-02-10T10:00:00+01:00", "1.00")], config)
    assert [
        (c["previous"], c["current"], c["direction"], c["period"], c["counter"], c["effective_from"])
        for c in changes(result, "monthly_amount")
    ] == [
        ("gold", "silver", "downgrade", "2026-11", "0.00", "2026-12-01T00:00:00+01:00"),
        ("silver", "bronze", "downgrade", "2026-12", "0.00", "2027-01-01T00:00:00+01:00"),
    ]
    assert state.systems["monthly_amount"].level == "bronze"


def test_one_step_by_close_period_commands():
    config = config_with("one_step")
    state, _ = feed(None, sales_in("2026-10", ["1.00"] * 26), config)
    periods = ["2026-10", "2026-11", "2026-12", "2027-01", "2027-02"]
    levels = []
    for period in periods:
        close_period(state, ClosePeriod(f"CC-{period}", "monthly_count", period), config)
        levels.append(state.systems["monthly_count"].level)
    assert levels == ["pro", "shopaholic", "favorite", "basic", "basic"]


def test_never_keeps_the_level_through_empty_months():
    config = config_with("never")
    state, _ = feed(None, sales_in("2026-10", ["70.00", "70.00", "70.00"]), config)
    state, [result] = feed(state, [sale("FEB", "2027-02-10T10:00:00+01:00", "1.00")], config)
    assert [(c["current"], c["period"]) for c in changes(result, "monthly_amount")] == [("gold", "2026-10")]
    assert state.systems["monthly_amount"].level == "gold"


# --- leap day and late receipts --------------------------------------------------------------


def test_leap_day_receipt():
    state, [result] = feed(None, [sale("LEAP", "2028-02-29T23:30:00+01:00", "60.00")])
    assert state.systems["monthly_amount"].period == "2028-02"
    assert message(result)["lines"][1] == "Spend 40.01 EUR more in February to be Silver in March"
    # 23:30 UTC on the leap day is already 1 March in Berlin.
    state, [march] = feed(state, [sale("MARCH", "2028-02-29T23:30:00+00:00", "1.00")])
    assert state.systems["monthly_amount"].period == "2028-03"
    assert state.systems["monthly_amount"].closed_amount == Decimal("60.00")
    assert changes(march) == []


def test_late_receipt_for_the_closed_period():
    state, _ = feed(None, sales_in("2026-11", ["60.00"]))
    state, _ = feed(state, [sale("DEC-1", "2026-12-01T00:10:00+01:00", "10.00")])
    latest = state.latest_issued_at
    state, [late] = feed(state, [sale("NOV-LATE", "2026-11-30T23:50:00+01:00", "50.00")])
    assert late.late is True
    assert late.duplicate is False
    amount = state.systems["monthly_amount"]
    assert (amount.period, amount.amount, amount.count) == ("2026-12", Decimal("10.00"), 1)
    assert (amount.closed_period, amount.closed_amount, amount.closed_count) == ("2026-11", Decimal("110.00"), 2)
    count = state.systems["monthly_count"]
    assert (count.count, count.closed_count) == (1, 2)
    assert offers(late) == []
    assert message(late)["receipt_id"] == "NOV-LATE"
    assert state.latest_issued_at == latest
    # It is remembered: sent again it is a duplicate.
    assert apply_receipt(state, sale("NOV-LATE", "2026-11-30T23:50:00+01:00", "50.00"), CONFIG).duplicate


def test_receipt_two_periods_back_is_late_and_counts_nowhere():
    state, _ = feed(None, sales_in("2026-11", ["60.00"]))
    state, _ = feed(state, [sale("DEC-1", "2026-12-01T10:00:00+01:00", "10.00")])
    state, [late] = feed(state, [sale("OCT", "2026-10-15T10:00:00+01:00", "50.00")])
    assert late.late
    amount = state.systems["monthly_amount"]
    assert (amount.amount, amount.closed_period, amount.closed_amount) == (
        Decimal("10.00"),
        "2026-11",
        Decimal("60.00"),
    )


# --- returns ---------------------------------------------------------------------------------


def test_full_return_of_an_instant_upgrade_receipt_revokes_it():
    state, _ = feed(None, [sale("BIG", "2026-11-03T12:00:00+01:00", "150.00")])
    assert state.systems["monthly_amount"].level == "gold"
    state, [result] = feed(state, [refund("RET", "2026-11-05T12:00:00+01:00", "150.00", "BIG")])
    assert changes(result) == [
        {
            "event_id": changes(result)[0]["event_id"],
            "customer_id": CUSTOMER,
            "status_system": "monthly_amount",
            "previous": "gold",
            "current": "bronze",
            "direction": "downgrade",
            "reason": "return_revoked",
            "effective_from": "2026-11-05T12:00:00+01:00",
            "valid_until": None,
            "counter": "0.00",
            "period": "2026-11",
            "caused_by": "RET",
            "occurred_at": "2026-11-05T12:00:00+01:00",
        }
    ]
    amount = state.systems["monthly_amount"]
    assert (amount.level, amount.reason, amount.valid_until, amount.amount) == (
        "bronze",
        "return_revoked",
        None,
        Decimal(0),
    )
    assert state.systems["monthly_count"].count == 0
    assert offers(result) == []
    assert message(result)["lines"] == [
        "Your status: Bronze (2% off)",
        "Spend 100.01 EUR more in November to be Silver in December",
        "6 more purchases in November make you Favorite customer in December",
    ]


def test_partial_return_lowers_the_amount_only():
    state, _ = feed(None, [sale("BIG", "2026-11-03T12:00:00+01:00", "150.00")])
    state, [result] = feed(state, [refund("RET-1", "2026-11-05T12:00:00+01:00", "50.00", "BIG")])
    assert changes(result) == []
    amount = state.systems["monthly_amount"]
    assert (amount.level, amount.amount, amount.count) == ("gold", Decimal("100.00"), 1)
    assert state.systems["monthly_count"].count == 1
    assert state.receipts["BIG"].returned == Decimal("50.00")
    # Returning the rest completes the return: now the upgrade is revoked.
    state, [rest] = feed(state, [refund("RET-2", "2026-11-06T12:00:00+01:00", "100.00", "BIG")])
    assert [(c["current"], c["reason"]) for c in changes(rest)] == [("bronze", "return_revoked")]
    assert state.systems["monthly_count"].count == 0


def test_return_after_the_close_does_not_revoke():
    state, _ = feed(None, [sale("BIG", "2026-11-30T12:00:00+01:00", "150.00")])
    state, [result] = feed(state, [refund("RET", "2026-12-01T12:00:00+01:00", "150.00", "BIG")])
    # November closed on 150.00 (Silver); the return does not revoke a period-close level.
    assert [(c["current"], c["reason"]) for c in changes(result)] == [("silver", "period_close")]
    assert state.systems["monthly_amount"].level == "silver"


def test_return_of_last_months_purchase_reduces_this_months_counters():
    # Issue 6: the period that counted the original while it is open; after that, the current one.
    state, _ = feed(None, [sale("NOV-1", "2026-11-10T10:00:00+01:00", "60.00")])
    state, _ = feed(state, [sale("DEC-1", "2026-12-02T10:00:00+01:00", "80.00")])
    state, [result] = feed(state, [refund("RET", "2026-12-03T10:00:00+01:00", "60.00", "NOV-1")])
    amount = state.systems["monthly_amount"]
    assert (amount.period, amount.amount, amount.count) == ("2026-12", Decimal("20.00"), 0)
    assert (amount.closed_period, amount.closed_amount) == ("2026-11", Decimal("60.00"))
    assert changes(result) == []
    assert message(result)["lines"][1] == "Spend 80.01 EUR more in December to be Silver in January"


def test_return_of_a_purchase_from_two_periods_ago_also_reduces_the_open_counters():
    state, _ = feed(None, [sale("OCT-1", "2026-10-10T10:00:00+01:00", "60.00")])
    state, _ = feed(state, [sale("NOV-1", "2026-11-10T10:00:00+01:00", "30.00")])
    state, _ = feed(state, [sale("DEC-1", "2026-12-02T10:00:00+01:00", "80.00")])
    state, _ = feed(state, [refund("RET", "2026-12-03T10:00:00+01:00", "60.00", "OCT-1")])
    amount = state.systems["monthly_amount"]
    assert (amount.amount, amount.closed_amount) == (Decimal("20.00"), Decimal("30.00"))
    assert state.systems["monthly_count"].count == 0


def _october_gold() -> CustomerState:
    """October closes on 250.00 (Gold, and 2 purchases) once November starts; OCT-52 is one of them."""
    state, _ = feed(
        None,
        [sale("OCT-198", "2026-10-20T10:00:00+02:00", "198.00"), sale("OCT-52", "2026-10-30T10:00:00+01:00", "52.00")],
    )
    return state


def statuses(result) -> dict[str, dict]:
    (snapshot,) = [o.value for o in result.outputs if o.kind is OutputKind.CUSTOMER_STATUS]
    return {s["status_system"]: s for s in snapshot["statuses"]}


@pytest.mark.parametrize("return_first", [True, False], ids=["return-first", "sale-first"])
def test_a_return_of_last_months_receipt_counts_the_same_before_or_after_this_months_sale(return_first):
    # Issue 34: returned on the 1st before buying anything, the return used to be floored away
    # (November ended at 60.00 and 1 purchase, not 8.00 and 0).
    first, then = "2026-11-01T10:00:00+01:00", "2026-11-01T11:00:00+01:00"
    ret = refund("RET-52", first if return_first else then, "52.00", "OCT-52")
    buy = sale("NOV-60", then if return_first else first, "60.00")
    state, _ = feed(_october_gold(), [ret, buy] if return_first else [buy, ret])
    amount, count = state.systems["monthly_amount"], state.systems["monthly_count"]
    assert (amount.level, amount.base_level, amount.amount, amount.count) == ("gold", "gold", Decimal("8.00"), 0)
    assert count.count == 0
    state, [december] = feed(state, [sale("DEC-1", "2026-12-01T09:00:00+01:00", "1.00")])
    assert [(c["status_system"], c["current"], c["reason"], c["counter"], c["period"]) for c in changes(december)] == [
        ("monthly_amount", "bronze", "period_close", "8.00", "2026-11")
    ]
    amount, count = state.systems["monthly_amount"], state.systems["monthly_count"]
    assert (amount.closed_amount, amount.closed_count, amount.level) == (Decimal("8.00"), 0, "bronze")
    assert (count.closed_count, count.level) == (0, "basic")


def test_a_return_before_any_sale_is_a_debit_that_no_receipt_prints_below_zero():
    state, [result] = feed(_october_gold(), [refund("RET-52", "2026-11-01T10:00:00+01:00", "52.00", "OCT-52")])
    amount, count = state.systems["monthly_amount"], state.systems["monthly_count"]
    assert (amount.amount, amount.count, count.count) == (Decimal("-52.00"), -1, -1)
    # The receipt promises what really earns the level: 252.01 more, 7 more purchases.
    assert message(result)["lines"] == [
        "Your status: Gold (10% off)",
        "Spend 252.01 EUR more in November to be Gold in December",
        "7 more purchases in November make you Favorite customer in December",
    ]
    # The status API shows the true counters, from which `remaining` is measured.
    shown = statuses(result)
    assert (shown["monthly_amount"]["counter"], shown["monthly_amount"]["remaining"]) == ("-52.00", "252.01")
    assert (shown["monthly_count"]["counter"], shown["monthly_count"]["remaining"]) == ("-1", "7")
    # Later sales make it up; the close decides by what is left.
    state, _ = feed(state, sales_in("2026-11", ["100.00", "52.01"], day=10))
    assert (state.systems["monthly_amount"].amount, state.systems["monthly_amount"].count) == (Decimal("100.01"), 1)
    state, [december] = feed(state, [sale("DEC-1", "2026-12-01T09:00:00+01:00", "1.00")])
    assert [(c["current"], c["counter"]) for c in changes(december, "monthly_amount")] == [("silver", "100.01")]


@pytest.mark.parametrize("returned", ["BIG-1", "BIG-2"], ids=["the-one-that-upgraded", "the-other"])
def test_an_instant_upgrade_stays_while_another_purchase_of_the_period_still_earns_it(returned):
    # Issue 34: two purchases above the instant rule's 100; one returned in full left the
    # customer Bronze with 150.00 counted and a qualifying purchase standing.
    state, _ = feed(
        None,
        [sale("BIG-1", "2026-11-03T12:00:00+01:00", "150.00"), sale("BIG-2", "2026-11-04T12:00:00+01:00", "150.00")],
    )
    state, [result] = feed(state, [refund("RET", "2026-11-05T12:00:00+01:00", "150.00", returned)])
    assert changes(result) == []
    amount = state.systems["monthly_amount"]
    assert (amount.level, amount.reason, amount.valid_until) == ("gold", "instant_rule", "2026-12-01T00:00:00+01:00")
    assert (amount.amount, amount.count, amount.instant_sales) == (Decimal("150.00"), 1, {"gold": 1})
    assert message(result)["lines"][0] == "Your status: Gold (10% off)"
    # The last one standing returned in full: now the upgrade is revoked.
    other = "BIG-2" if returned == "BIG-1" else "BIG-1"
    state, [last] = feed(state, [refund("RET-2", "2026-11-06T12:00:00+01:00", "150.00", other)])
    assert [(c["previous"], c["current"], c["reason"], c["valid_until"]) for c in changes(last)] == [
        ("gold", "bronze", "return_revoked", None)
    ]
    assert state.systems["monthly_amount"].instant_sales == {}


@pytest.mark.parametrize("partial_first", [True, False])
def test_a_partly_returned_purchase_still_earns_the_instant_upgrade_whatever_the_order(partial_first):
    # A purchase meets the rule until it is returned in full, as the one that caused the upgrade:
    # judged by what is left of it, the level would depend on which return came first.
    state, _ = feed(
        None,
        [sale("BIG-1", "2026-11-03T12:00:00+01:00", "150.00"), sale("BIG-2", "2026-11-04T12:00:00+01:00", "150.00")],
    )
    partial = refund("RET-P", "2026-11-05T12:00:00+01:00", "140.00", "BIG-2")
    full = refund("RET-F", "2026-11-05T13:00:00+01:00", "150.00", "BIG-1")
    state, results = feed(state, [partial, full] if partial_first else [full, partial])
    assert [changes(r) for r in results] == [[], []]
    amount = state.systems["monthly_amount"]
    assert (amount.level, amount.amount, amount.count) == ("gold", Decimal("10.00"), 1)


def test_the_only_qualifying_purchase_returned_in_full_revokes_though_others_were_bought():
    state, _ = feed(None, sales_in("2026-11", ["150.00", "90.00", "100.00"]))
    state, [result] = feed(state, [refund("RET", "2026-11-10T12:00:00+01:00", "150.00", "R2026-11-000")])
    assert [(c["previous"], c["current"], c["reason"], c["counter"]) for c in changes(result)] == [
        ("gold", "bronze", "return_revoked", "190.00")
    ]


def test_a_return_of_last_months_qualifying_purchase_leaves_this_months_instant_upgrade():
    # October's purchase stood for October's upgrade; November's upgrade stands on November's own.
    state, _ = feed(None, [sale("OCT-BIG", "2026-10-30T12:00:00+01:00", "150.00")])
    state, _ = feed(state, [sale("NOV-BIG", "2026-11-03T12:00:00+01:00", "120.00")])
    amount = state.systems["monthly_amount"]
    assert (amount.base_level, amount.level, amount.reason) == ("silver", "gold", "instant_rule")
    state, [result] = feed(state, [refund("RET", "2026-11-04T12:00:00+01:00", "150.00", "OCT-BIG")])
    assert changes(result) == []
    assert (amount.level, amount.amount, amount.instant_sales) == ("gold", Decimal("-30.00"), {"gold": 1})


def test_a_qualifying_purchase_the_receipt_memory_let_go_still_earns_the_instant_upgrade():
    small = parse_config(DEFAULT_CONFIG.read_text(encoding="utf-8") + "\nreceipt_memory: 10\n")
    receipts = [
        sale("BIG-1", "2026-11-02T12:00:00+01:00", "150.00"),
        sale("BIG-2", "2026-11-02T13:00:00+01:00", "150.00"),
        *sales_in("2026-11", ["1.00"] * 9, day=3),
    ]
    state, _ = feed(None, receipts, small)
    assert "BIG-1" not in state.receipts and "BIG-2" in state.receipts
    state, [result] = feed(state, [refund("RET", "2026-11-05T12:00:00+01:00", "150.00", "BIG-2")], small)
    assert changes(result) == []
    assert state.systems["monthly_amount"].level == "gold"


def test_an_instant_level_falls_to_the_highest_one_a_remaining_purchase_still_earns():
    text = DEFAULT_CONFIG.read_text(encoding="utf-8").replace(
        "      - {id: big_purchase,",
        "      - {id: fair_purchase, when: {single_purchase_above: 50}, to: silver, until: period_end}\n"
        "      - {id: big_purchase,",
    )
    config = parse_config(text)
    receipts = [sale("FAIR", "2026-11-03T12:00:00+01:00", "60.00"), sale("BIG", "2026-11-04T12:00:00+01:00", "150.00")]
    state, _ = feed(None, receipts, config)
    amount = state.systems["monthly_amount"]
    assert (amount.level, amount.instant_sales) == ("gold", {"silver": 1, "gold": 1})
    state, [big] = feed(state, [refund("RET-BIG", "2026-11-05T12:00:00+01:00", "150.00", "BIG")], config)
    assert [(c["previous"], c["current"], c["reason"], c["valid_until"]) for c in changes(big)] == [
        ("gold", "silver", "return_revoked", "2026-12-01T00:00:00+01:00")
    ]
    assert (amount.level, amount.reason, amount.valid_until) == ("silver", "instant_rule", "2026-12-01T00:00:00+01:00")
    state, [fair] = feed(state, [refund("RET-FAIR", "2026-11-06T12:00:00+01:00", "60.00", "FAIR")], config)
    assert [(c["previous"], c["current"], c["reason"]) for c in changes(fair)] == [
        ("silver", "bronze", "return_revoked")
    ]
    assert (amount.level, amount.reason, amount.valid_until) == ("bronze", "return_revoked", None)


def test_a_state_stored_before_instant_sales_were_counted_keeps_its_upgrade_standing():
    # Stored by the previous version: no "is", and the record names only the system it upgraded.
    state, _ = feed(None, [sale("BIG-1", "2026-11-03T12:00:00+01:00", "150.00")])
    old = json.loads(state.to_bytes())
    for system in old["sys"].values():
        system.pop("is", None)
    old["rc"] = [[*r[:4], [each[0] for each in r[4]]] if len(r) > 3 else r for r in old["rc"]]
    legacy = json.dumps(old).encode()
    loaded = CustomerState.from_bytes(legacy)
    assert loaded.systems["monthly_amount"].instant_sales == {"gold": 1}
    assert loaded.receipts["BIG-1"].instant == (("monthly_amount", ""),)
    # Its own return in full revokes, as it always did.
    _, [alone] = feed(loaded, [refund("RET-1", "2026-11-05T12:00:00+01:00", "150.00", "BIG-1")])
    assert [(c["current"], c["reason"]) for c in changes(alone)] == [("bronze", "return_revoked")]
    # A purchase counted since then, returned, leaves the upgrade the stored one stands for; then
    # the stored one returned revokes it.
    state, _ = feed(CustomerState.from_bytes(legacy), [sale("BIG-2", "2026-11-04T12:00:00+01:00", "150.00")])
    state, [second] = feed(state, [refund("RET-2", "2026-11-05T12:00:00+01:00", "150.00", "BIG-2")])
    assert changes(second) == []
    state, [first] = feed(state, [refund("RET-1", "2026-11-06T12:00:00+01:00", "150.00", "BIG-1")])
    assert [(c["current"], c["reason"]) for c in changes(first)] == [("bronze", "return_revoked")]


def _cents(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


#: A November item: (receipt id, total in cents, the original's id for a return, None for a sale).
Item = tuple[str, int, str | None]


@st.composite
def a_month_with_returns(draw: st.DrawFn) -> tuple[dict[str, int], list[Item]]:
    """October's sales (id -> cents), and November's sales and returns (of sales of either month:
    none, in full, in two parts or in part) in an arrival order where a return follows its original."""
    amounts = st.integers(min_value=1, max_value=30_000)
    october = {f"OCT-{i}": cents for i, cents in enumerate(draw(st.lists(amounts, max_size=3)))}
    sales: list[Item] = [(f"NOV-{i}", c, None) for i, c in enumerate(draw(st.lists(amounts, min_size=1, max_size=6)))]
    returns: list[Item] = []
    for original, cents in [*october.items(), *((sale_id, cents) for sale_id, cents, _ in sales)]:
        plan = draw(st.sampled_from(["none", "full", "two parts", "part"] if cents > 1 else ["none", "full"]))
        if plan == "full":
            returns.append((f"RET-{original}", cents, original))
        elif plan != "none":
            first = draw(st.integers(min_value=1, max_value=cents - 1))
            returns.append((f"RET-{original}-a", first, original))
            if plan == "two parts":
                returns.append((f"RET-{original}-b", cents - first, original))
    order: list[Item] = []
    waiting: list[Item] = []  # returns drawn before their original, placed right after it
    for item in draw(st.permutations(sales + returns)):
        original = item[2]
        if original is not None and original not in october and original not in {i[0] for i in order}:
            waiting.append(item)
            continue
        order.append(item)
        order += [w for w in waiting if w[2] == item[0]]
        waiting = [w for w in waiting if w[2] != item[0]]
    return october, order


def _earned(counter: Decimal, thresholds: list[tuple[int, str]], first: str) -> str:
    return next((level for above, level in reversed(thresholds) if counter > above), first)


AMOUNT_LEVELS, COUNT_LEVELS = [(100, "silver"), (200, "gold")], [(5, "favorite"), (15, "shopaholic"), (25, "pro")]


@settings(max_examples=200, deadline=None)
@given(month=a_month_with_returns())
def test_any_arrival_order_of_a_months_sales_and_returns_closes_on_the_same_counters_and_level(month):
    # Issue 34. Worked out from the receipts, not from the order they came in: November's sales
    # less every return it took (of either month's sales), its purchases less those returned in full.
    october, items = month
    november = {receipt_id: cents for receipt_id, cents, original in items if original is None}
    returned: dict[str, int] = {}
    for _, cents, original in items:
        if original is not None:
            returned[original] = returned.get(original, 0) + cents
    in_full = {original for original, cents in returned.items() if cents == (october | november)[original]}
    amount = Decimal(sum(november.values()) - sum(returned.values())) / 100
    count = len(november) - len(in_full)
    state, _ = feed(
        None, [sale(i, f"2026-10-{10 + n:02d}T12:00:00+02:00", _cents(c)) for n, (i, c) in enumerate(october.items())]
    )
    start = datetime.fromisoformat("2026-11-01T00:30:00+01:00")
    for n, (receipt_id, cents, original) in enumerate(items):
        issued = (start + timedelta(hours=5 * n)).isoformat()
        made = sale if original is None else functools.partial(refund, original=original)
        state, _ = feed(state, [made(receipt_id, issued, _cents(cents))])
    # Before the close: the counters, and the instant Gold while a purchase above 100.00 stands.
    earned_in_october = _earned(Decimal(sum(october.values())) / 100, AMOUNT_LEVELS, "bronze")
    standing = any(cents > 10_000 and i not in in_full for i, cents in november.items())
    by_amount, by_count = state.systems["monthly_amount"], state.systems["monthly_count"]
    assert (by_amount.amount, by_amount.count, by_count.count) == (amount, count, count)
    assert by_amount.level == ("gold" if standing else earned_in_october)
    state, _ = feed(state, [sale("DEC-1", "2026-12-01T09:00:00+01:00", "1.00")])
    by_amount, by_count = state.systems["monthly_amount"], state.systems["monthly_count"]
    assert (by_amount.closed_amount, by_amount.closed_count, by_count.closed_count) == (amount, count, count)
    assert by_amount.level == _earned(amount, AMOUNT_LEVELS, "bronze")
    assert by_count.level == _earned(Decimal(count), COUNT_LEVELS, "basic")


def test_a_returned_fifth_purchase_is_not_rewarded_twice():
    receipts = sales_in("2026-11", ["10.00"] * 5)
    state, results = feed(None, receipts)
    assert [o["points"] for o in offers(results[-1]) if o["offer_id"] == "fifth_purchase_bonus"] == [100]
    state, _ = feed(state, [refund("RET-5", "2026-11-20T10:00:00+01:00", "10.00", receipts[-1].receipt_id)])
    state, [again] = feed(state, [sale("R-6", "2026-11-21T10:00:00+01:00", "10.00")])
    assert state.systems["monthly_amount"].count == 5
    assert [o for o in offers(again) if o["offer_id"] == "fifth_purchase_bonus"] == []
    _, later = feed(state, sales_in("2026-11", ["10.00"] * 5, prefix="S", day=22))
    assert [o["receipt_id"] for r in later for o in offers(r) if o["offer_id"] == "fifth_purchase_bonus"] == [
        "S2026-11-004"
    ]


def test_a_count_lowered_by_last_months_receipt_is_rewarded_at_its_fifth_purchase_net():
    # The return is not lost to the order: November's count starts at -1, and the 6th sale makes 5.
    state, _ = feed(_october_gold(), [refund("RET-52", "2026-11-01T10:00:00+01:00", "52.00", "OCT-52")])
    _, results = feed(state, sales_in("2026-11", ["10.00"] * 6, day=3))
    fired = [o["receipt_id"] for r in results for o in offers(r) if o["offer_id"] == "fifth_purchase_bonus"]
    assert fired == ["R2026-11-005"]


def test_a_late_receipt_that_changes_the_closed_periods_level_corrects_it():
    state, _ = feed(None, [sale("NOV-1", "2026-11-10T10:00:00+01:00", "90.00")])
    state, [_december] = feed(state, [sale("DEC-1", "2026-12-01T00:10:00+01:00", "5.00")])
    assert state.systems["monthly_amount"].level == "bronze"
    # A till that was offline sends its 23:50 receipt after midnight: November reaches 120.00.
    state, [late] = feed(state, [sale("NOV-2", "2026-11-30T23:50:00+01:00", "30.00")])
    assert late.late and not late.history_only
    (change,) = changes(late)
    assert {
        k: change[k] for k in ("previous", "current", "direction", "reason", "effective_from", "period", "counter")
    } == {
        "previous": "bronze",
        "current": "silver",
        "direction": "upgrade",
        "reason": "late_receipt",
        "effective_from": "2026-12-01T00:00:00+01:00",
        "period": "2026-11",
        "counter": "120.00",
    }
    amount = state.systems["monthly_amount"]
    assert (amount.level, amount.base_level, amount.amount) == ("silver", "silver", Decimal("5.00"))
    assert offers(late) == []


def test_a_receipt_older_than_the_last_closed_period_goes_to_history_only():
    state, _ = feed(None, [sale("OCT-1", "2026-10-10T10:00:00+02:00", "10.00")])
    state, _ = feed(state, [sale("DEC-1", "2026-12-02T10:00:00+01:00", "5.00")])
    before = (state.systems["monthly_amount"].closed_amount, state.systems["monthly_amount"].amount)
    state, [old] = feed(state, [sale("OCT-2", "2026-10-20T10:00:00+02:00", "500.00")])
    assert old.late and old.history_only
    assert changes(old) == []
    assert (state.systems["monthly_amount"].closed_amount, state.systems["monthly_amount"].amount) == before
    assert "OCT-2" in state.receipts


def test_return_for_an_unknown_receipt_is_refused():
    state, _ = feed(None, [sale("R1", "2026-11-03T12:00:00+01:00", "50.00")])
    snapshot = state.to_bytes()
    with pytest.raises(InvalidInput, match="original_receipt_id: 'NOPE' is not a counted receipt"):
        apply_receipt(state, refund("RET", "2026-11-05T12:00:00+01:00", "10.00", "NOPE"), CONFIG)
    assert state.to_bytes() == snapshot


def test_over_returning_is_refused():
    state, _ = feed(None, [sale("R1", "2026-11-03T12:00:00+01:00", "50.00")])
    with pytest.raises(InvalidInput, match=r"total: returning 50.01 would exceed the 50.00 left of 'R1'"):
        apply_receipt(state, refund("RET", "2026-11-05T12:00:00+01:00", "50.01", "R1"), CONFIG)
    state, _ = feed(state, [refund("RET-1", "2026-11-05T12:00:00+01:00", "30.00", "R1")])
    snapshot = state.to_bytes()
    with pytest.raises(InvalidInput, match=r"returning 20.01 would exceed the 20.00 left of 'R1'"):
        apply_receipt(state, refund("RET-2", "2026-11-06T12:00:00+01:00", "20.01", "R1"), CONFIG)
    assert state.to_bytes() == snapshot


def test_duplicate_return_counts_once():
    state, _ = feed(None, [sale("R1", "2026-11-03T12:00:00+01:00", "50.00")])
    state, _ = feed(state, [refund("RET", "2026-11-05T12:00:00+01:00", "20.00", "R1")])
    again = apply_receipt(state, refund("RET", "2026-11-05T12:00:00+01:00", "20.00", "R1"), CONFIG)
    assert again.duplicate
    assert state.systems["monthly_amount"].amount == Decimal("30.00")


# --- anonymous receipts ----------------------------------------------------------------------


def test_anonymous_receipt_gets_one_message_and_counts_for_no_one():
    result = apply_receipt(
        None, sale("ANON-1", "2026-11-03T12:00:00+01:00", "150.00", customer=None, card="7000001"), CONFIG
    )
    assert result.state is None
    assert len(result.outputs) == 1
    out = result.outputs[0]
    assert out.kind is OutputKind.RECEIPT_MESSAGE
    assert out.key == "POS7"
    assert out.value == {
        "event_id": out.value["event_id"],
        "receipt_id": "ANON-1",
        "pos_id": "POS7",
        "customer_id": None,
        "lines": ["Join our loyalty programme: 2% off from your first purchase."],
        "caused_by": "ANON-1",
        "occurred_at": "2026-11-03T12:00:00+01:00",
    }
    again = apply_receipt(
        None, sale("ANON-1", "2026-11-03T12:00:00+01:00", "150.00", customer=None, card="7000001"), CONFIG
    )
    assert again.outputs[0].value["event_id"] == out.value["event_id"]
    # A replay that only rebuilds states makes no message that no state keeps.
    anonymous = sale("ANON-2", "2026-11-03T12:00:00+01:00", "150.00", customer=None, card="7000001")
    assert apply_receipt(None, anonymous, CONFIG, state_only=True).outputs == []


# --- state serialisation ---------------------------------------------------------------------


def test_state_round_trip_preserves_everything():
    receipts = [
        *sales_in("2026-11", ["60.00", "50.00", "10.00"]),
        sale("DEC-1", "2026-12-01T09:00:00+01:00", "5.00"),
        sale("NOV-LATE", "2026-11-30T23:30:00+01:00", "7.77"),
        refund("DEC-RET", "2026-12-02T09:00:00+01:00", "2.50", "DEC-1"),
        sale("DEC-BIG", "2026-12-03T09:00:00+01:00", "101.00"),
    ]
    state, _ = feed(None, receipts)
    state.client_state = ClientState.NEW
    raw = state.to_bytes()
    restored = CustomerState.from_bytes(raw)
    assert restored == state
    assert restored.to_bytes() == raw
    amount = restored.systems["monthly_amount"]
    assert (amount.level, amount.base_level, amount.reason, amount.valid_until) == (
        "gold",
        "silver",
        "instant_rule",
        "2027-01-01T00:00:00+01:00",
    )
    assert (amount.amount, amount.count) == (Decimal("103.50"), 2)
    assert (amount.closed_period, amount.closed_amount, amount.closed_count) == ("2026-11", Decimal("127.77"), 4)
    assert restored.receipts["DEC-1"].returned == Decimal("2.50")
    assert restored.receipts["DEC-BIG"].instant == (("monthly_amount", "gold"),)
    assert amount.instant_sales == {"gold": 1}
    assert restored.latest_issued_at == int(datetime.fromisoformat("2026-12-03T09:00:00+01:00").timestamp())
    assert restored.client_state is ClientState.NEW
    # Going on from the restored state gives the same events as going on from the original.
    following = sale("DEC-2", "2026-12-04T09:00:00+01:00", "3.00")
    from_original = apply_receipt(state, following, CONFIG)
    from_restored = apply_receipt(restored, following, CONFIG)
    assert [o.value for o in from_original.outputs] == [o.value for o in from_restored.outputs]
    assert from_original.state == from_restored.state


def test_round_trip_of_an_empty_state():
    state = CustomerState(customer_id="C-1")
    assert CustomerState.from_bytes(state.to_bytes()) == state


# --- receipt-message lines -------------------------------------------------------------------


def test_message_for_120_50_spent_in_two_purchases():
    _state, results = feed(customer("bronze"), sales_in("2026-11", ["60.25", "60.25"]))
    assert message(results[-1])["lines"] == [
        "Your status: Bronze (2% off)",
        "Spend 79.51 EUR more in November to be Gold in December",
        "4 more purchases in November make you Favorite customer in December",
    ]


def test_message_for_a_silver_customer_at_120_49():
    _state, results = feed(customer("silver"), sales_in("2026-11", ["60.25", "60.24"]))
    assert message(results[-1])["lines"] == [
        "Your status: Silver (5% off)",
        "Spend 79.52 EUR more in November to be Gold in December",
        "4 more purchases in November make you Favorite customer in December",
    ]
    assert message(results[-1])["pos_id"] == "POS7"


def test_message_at_the_top_has_no_spend_line():
    _state, results = feed(customer("gold", "pro"), sales_in("2026-11", ["70.00", "70.00", "60.01"] + ["1.00"] * 23))
    assert message(results[-1])["lines"] == ["Your status: Gold (10% off)"]


def test_message_when_exactly_at_a_threshold():
    _state, results = feed(customer("bronze", "basic"), sales_in("2026-11", ["50.00", "50.00", "1.00", "1.00", "1.00"]))
    # 103.00 spent: Silver is earned, Gold is 97.01 away; 5 purchases: one more for Favorite.
    assert message(results[-1])["lines"] == [
        "Your status: Bronze (2% off)",
        "Spend 97.01 EUR more in November to be Gold in December",
        "1 more purchases in November make you Favorite customer in December",
    ]
    # Exactly 100.00 does not earn Silver yet: one more cent does.
    assert message(results[1])["lines"][1] == "Spend 0.01 EUR more in November to be Silver in December"


def test_message_event_fields():
    _state, [result] = feed(customer("bronze"), [sale("R1", "2026-11-03T12:00:00+01:00", "10.00")])
    out = next(o for o in result.outputs if o.kind is OutputKind.RECEIPT_MESSAGE)
    assert out.key == "POS7"
    assert out.value["customer_id"] == CUSTOMER
    assert out.value["receipt_id"] == "R1"
    assert out.value["caused_by"] == "R1"
    assert out.value["occurred_at"] == "2026-11-03T12:00:00+01:00"


def test_output_order_and_keys():
    _state, [result] = feed(None, [sale("BIG", "2026-11-03T12:00:00+01:00", "150.00")])
    assert [(o.kind.value, o.key) for o in result.outputs] == [
        ("status_change", CUSTOMER),
        ("status_change", CUSTOMER),
        ("status_change", CUSTOMER),
        ("offer_trigger", CUSTOMER),
        ("receipt_message", "POS7"),
        ("customer_status", CUSTOMER),
    ]
    assert [c["reason"] for c in changes(result)] == ["initial", "instant_rule", "initial"]


def test_receipt_older_than_the_dedupe_window_is_refused():
    state, _ = feed(None, [sale("R1", "2026-11-03T12:00:00+01:00", "10.00")])
    with pytest.raises(InvalidInput, match="de-duplication window"):
        apply_receipt(state, sale("OLD", "2026-08-01T12:00:00+01:00", "10.00"), CONFIG)


def test_receipt_memory_is_capped_and_what_was_forgotten_is_refused_not_recounted():
    small = parse_config(DEFAULT_CONFIG.read_text(encoding="utf-8") + "\nreceipt_memory: 10\n")
    receipts = [sale(f"M{n:02d}", f"2026-11-{1 + n // 10:02d}T{8 + n % 10:02d}:00:00+01:00", "1.00") for n in range(25)]
    state, _ = feed(None, receipts, small)
    assert list(state.receipts) == [f"M{n:02d}" for n in range(15, 25)]
    assert state.systems["monthly_count"].count == 25
    # M03 was forgotten: a resend of it cannot be told from a new receipt, so it is refused.
    with pytest.raises(InvalidInput, match="de-duplication window"):
        apply_receipt(state, receipts[3], small)
    assert state.systems["monthly_count"].count == 25
    # So is the newest one forgotten, whose time is the very bound of what was forgotten
    # (the crash storm found it counted twice: the bound was taken as exclusive).
    assert state.forgotten_before == int(receipts[14].issued_at.timestamp())
    with pytest.raises(InvalidInput, match="de-duplication window"):
        apply_receipt(state, receipts[14], small)
    assert state.systems["monthly_count"].count == 25


def test_a_receipt_past_the_window_forgets_every_receipt_behind_it_at_once():
    # Five receipts in September, then one in November, past the 62-day window of the first
    # four but not of the fifth: those four are forgotten by that one receipt, the fifth kept.
    early = [sale(f"S{n}", f"2026-09-0{1 + n}T12:00:00+02:00", "1.00") for n in range(4)]
    kept = sale("S4", "2026-09-30T12:00:00+02:00", "1.00")
    state, _ = feed(None, [*early, kept])
    apply_receipt(state, sale("N1", "2026-11-05T12:00:00+01:00", "1.00"), CONFIG)
    assert list(state.receipts) == ["S4", "N1"]
    assert state.forgotten_before == int(early[-1].issued_at.timestamp())


def test_a_forgotten_receipt_with_a_fraction_of_a_second_is_refused_too():
    small = parse_config(DEFAULT_CONFIG.read_text(encoding="utf-8") + "\nreceipt_memory: 10\n")
    receipts = [sale(f"F{n:02d}", f"2026-11-02T08:{n:02d}:07.250+01:00", "1.00") for n in range(11)]
    state, _ = feed(None, receipts, small)
    assert "F00" not in state.receipts
    with pytest.raises(InvalidInput, match="de-duplication window"):
        apply_receipt(state, receipts[0], small)
    assert state.systems["monthly_count"].count == 11
    # A new receipt a second after the last one forgotten is counted.
    assert not apply_receipt(state, sale("F99", "2026-11-02T08:00:08+01:00", "1.00"), small).duplicate
    assert state.systems["monthly_count"].count == 12


def test_only_the_latest_receipts_keep_their_message_for_replay():
    receipts = sales_in("2026-11", ["10.00"] * 5)
    state, results = feed(None, receipts)
    kept = [rid for rid, record in state.receipts.items() if record.message is not None]
    assert kept == [r.receipt_id for r in receipts[-CONFIG.replay_memory :]]
    again = apply_receipt(state, receipts[-1], CONFIG)
    assert [o.value for o in again.outputs] == [o.value for o in _message_and_snapshot(results[-1].outputs)]
    # An older resend only repeats the latest snapshot, identical to the one already sent.
    assert [o.value for o in apply_receipt(state, receipts[0], CONFIG).outputs] == [results[-1].outputs[-1].value]


def test_the_customer_status_snapshot_is_the_api_view():
    state, results = feed(None, [sale("V1", "2026-11-03T12:00:00+01:00", "120.49")])
    snapshot = results[-1].outputs[-1]
    assert snapshot.kind is OutputKind.CUSTOMER_STATUS
    assert snapshot.value["version"] == 1
    assert snapshot.value["client_state"] == "registered"
    amount, count = snapshot.value["statuses"]
    assert amount == {
        "status_system": "monthly_amount",
        "status": "gold",
        "name": "Gold",
        "privileges": {"discount_percent": 10, "favorite_products": 7},
        "valid_until": "2026-12-01T00:00:00+01:00",
        "period": "2026-11",
        "counter": "120.49",
        "next_status": "gold",
        "remaining": "79.52",
    }
    assert (count["status"], count["counter"], count["next_status"], count["remaining"]) == (
        "basic",
        "1",
        "favorite",
        "5",
    )
    closed = close_period(state, ClosePeriod("CLOSE-1", "monthly_amount", "2026-11"), CONFIG)
    after = closed.outputs[-1].value
    assert (after["version"], after["caused_by"], after["occurred_at"]) == (2, "CLOSE-1", "2026-12-01T00:00:00+01:00")
    assert after["statuses"][0]["status"] == "silver"


def manual(command_id: str, at: str, status: str, valid_until: str | None = None, source: str = "manual") -> SetStatus:
    return SetStatus(
        command_id=command_id,
        customer_id=CUSTOMER,
        status_system="monthly_amount",
        status=status,
        valid_until=date.fromisoformat(valid_until) if valid_until else None,
        reason="wrong status fixed",
        operator="agent-17",
        source=source,
        requested_at=datetime.fromisoformat(at),
    )


def test_manual_status_without_valid_until_holds_to_the_period_end_then_the_rules_decide():
    state, _ = feed(None, [sale("R1", "2026-11-03T12:00:00+01:00", "50.00")])
    result = set_status(state, manual("CC-1", "2026-11-10T09:00:00+01:00", "gold"), CONFIG)
    (change,) = changes(result)
    assert {
        k: change[k] for k in ("previous", "current", "direction", "reason", "valid_until", "operator", "comment")
    } == {
        "previous": "bronze",
        "current": "gold",
        "direction": "upgrade",
        "reason": "manual",
        "valid_until": "2026-12-01T00:00:00+01:00",
        "operator": "agent-17",
        "comment": "wrong status fixed",
    }
    assert result.outputs[-1].value["statuses"][0]["status"] == "gold"
    # December's first receipt closes November: 50.00 earns Bronze, and the manual Gold has ended.
    _, [december] = feed(result.state, [sale("R2", "2026-12-02T12:00:00+01:00", "5.00")])
    assert [(c["previous"], c["current"], c["reason"]) for c in changes(december)] == [
        ("gold", "bronze", "period_close")
    ]


def test_manual_status_with_valid_until_holds_across_period_closes():
    state, _ = feed(None, [sale("R1", "2026-11-03T12:00:00+01:00", "50.00")])
    state = set_status(state, manual("CC-1", "2026-11-10T09:00:00+01:00", "gold", "2026-12-31"), CONFIG).state
    _, [december] = feed(state, [sale("R2", "2026-12-02T12:00:00+01:00", "5.00")])
    assert changes(december) == []
    assert december.state.systems["monthly_amount"].level == "gold"
    assert december.state.systems["monthly_amount"].valid_until == "2027-01-01T00:00:00+01:00"
    _, [january] = feed(december.state, [sale("R3", "2027-01-02T12:00:00+01:00", "5.00")])
    assert [(c["previous"], c["current"], c["reason"]) for c in changes(january)] == [
        ("gold", "bronze", "period_close")
    ]


def test_manual_status_that_ends_within_a_period_gives_way_to_the_earned_level():
    state, _ = feed(None, sales_in("2026-10", ["150.00"]))
    _, [november] = feed(state, [sale("R1", "2026-11-01T12:00:00+01:00", "5.00")])
    assert november.state.systems["monthly_amount"].level == "silver"
    state = set_status(november.state, manual("CC-2", "2026-11-02T09:00:00+01:00", "gold", "2026-11-15"), CONFIG).state
    _, [later] = feed(state, [sale("R2", "2026-11-20T12:00:00+01:00", "5.00")])
    (expired,) = changes(later)
    assert (expired["previous"], expired["current"], expired["reason"], expired["effective_from"]) == (
        "gold",
        "silver",
        "manual",
        "2026-11-16T00:00:00+01:00",
    )
    assert expired["comment"] == "manual status expired"


def test_batch_status_for_a_new_customer_is_an_assignment_and_a_resent_command_applies_once():
    command = manual("B-1", "2026-11-10T09:00:00+01:00", "silver", source="batch")
    first = set_status(None, command, CONFIG)
    (change,) = changes(first)
    assert (change["previous"], change["current"], change["direction"], change["reason"]) == (
        None,
        "silver",
        "assign",
        "batch",
    )
    again = set_status(first.state, command, CONFIG)
    assert again.duplicate
    assert changes(again) == []
    assert again.outputs[-1].value == first.outputs[-1].value


def test_lines_rendered_when_read_are_the_lines_of_the_moment_the_receipt_was_counted():
    # Upgrades (instant and at the close), at-risk days, a month change, a return and a
    # resend: every message read only at the end, after the state moved on, must read as
    # the one rendered at once.
    receipts = [
        sale("W-1", "2026-10-03T12:00:00+02:00", "40.00"),
        sale("W-2", "2026-10-26T12:00:00+01:00", "150.00"),  # instant Gold; at-risk week
        sale("W-3", "2026-10-30T12:00:00+01:00", "30.00"),
        refund("W-4", "2026-10-31T12:00:00+01:00", "150.00", "W-2"),  # revokes the instant Gold
        sale("W-5", "2026-11-02T09:00:00+01:00", "12.00"),  # October closes: Silver
        sale("W-5", "2026-11-02T09:00:00+01:00", "12.00"),  # a resend
        *(sale(f"W-{n}", f"2026-11-{n:02d}T10:00:00+01:00", "25.00") for n in range(6, 14)),
    ]
    at_once, later = None, None
    expected, deferred = [], []
    for receipt in receipts:
        now = apply_receipt(at_once, receipt, CONFIG)
        expected += [o.value for o in now.outputs if o.kind is OutputKind.RECEIPT_MESSAGE]
        for output in now.outputs:
            output.value  # noqa: B018 - as the live pipeline reads them
        deferred_result = apply_receipt(later, receipt, CONFIG, lines_when_read=True)
        deferred += [o for o in deferred_result.outputs if o.kind is OutputKind.RECEIPT_MESSAGE]
        at_once, later = now.state, deferred_result.state
    assert any("Congratulations" in line for message in expected for line in message["lines"])
    assert [o.value for o in deferred] == expected
    assert later is not None and at_once is not None and later.to_bytes() == at_once.to_bytes()


def test_what_a_deferred_message_keeps_of_a_standing_renders_the_lines_the_whole_standing_does():
    # Every field set to something other than its default, whatever fields there are: a field
    # the message rules come to read that `seen_by_messages` leaves out makes this fail.
    original = SystemState(level="silver", base_level="gold", period="2026-11")  # held below what was earned
    for number, f in enumerate(dataclasses.fields(SystemState)):
        current = getattr(original, f.name)
        if isinstance(current, list):
            value: object = [number, number + 1]
        elif isinstance(current, dict):
            value = {f"{f.name}-{number}": number + 1}
        elif isinstance(current, Decimal):
            value = Decimal(number) + Decimal("0.25")
        elif isinstance(current, int):
            value = number + 1
        elif f.name not in ("level", "base_level", "period"):
            value = f"{f.name}-{number}"
        else:
            continue
        setattr(original, f.name, value)
    seen = original.seen_by_messages("monthly_amount")
    original.days.append(99)  # the standing moves on; what was seen stays
    back = SystemState.from_seen(seen)
    assert back.days == [13, 14] and (back.amount, back.count, back.friends) == (original.amount, 5, 13)
    original.days.pop()
    common = {"currency": "EUR", "receipt_total": "10.00", "customer_id": "C-1", "store_id": "S-1"}
    changes = [ChangeNote("monthly_amount", "silver", "gold", "upgrade")]
    # One-step downgrades too, so that the earned level shows in the lines (the shipped rules recompute).
    one_step = CONFIG.status_systems[0].model_copy(update={"downgrade": DowngradePolicy.ONE_STEP})
    stepping = CONFIG.model_copy(update={"status_systems": (one_step, *CONFIG.status_systems[1:])})
    for when in (
        datetime.fromisoformat("2026-11-03T10:00:00+01:00"),
        datetime.fromisoformat("2026-11-29T10:00:00+01:00"),
    ):
        for rules in (CONFIG, stepping):
            whole = purchase_lines(rules, {"monthly_amount": original}, changes, common, when)
            assert whole and purchase_lines(rules, {"monthly_amount": back}, changes, common, when) == whole


def test_the_latest_change_is_stored_and_shown_with_the_receipts_own_time():
    fresh = CustomerState(customer_id=CUSTOMER)
    assert json.loads(fresh.to_bytes())["lc"] == ["", ""]
    assert CustomerState.from_bytes(fresh.to_bytes()).last_cause == ("", None)
    result = apply_receipt(None, sale("R-1", "2026-11-03T10:15:30.250000+01:00", "12.00"), CONFIG)
    assert result.state is not None
    stored = result.state.to_bytes()
    assert json.loads(stored)["lc"] == ["R-1", "2026-11-03T10:15:30.250000+01:00"]
    again = CustomerState.from_bytes(stored)
    assert again.last_cause == result.state.last_cause and again.to_bytes() == stored
    snapshot = next(o for o in result.outputs if o.kind is OutputKind.CUSTOMER_STATUS)
    assert (snapshot.value["caused_by"], snapshot.value["occurred_at"]) == ("R-1", "2026-11-03T10:15:30.250000+01:00")


@pytest.mark.parametrize(
    ("cls", "required"),
    [
        (Result, [None]),
        (ReceiptRecord, [1_793_000_000, Decimal("12.50")]),
        (SystemState, ["Gold", "Silver", "2026-11"]),
        (CustomerState, ["C1"]),
    ],
)
def test_a_written_out_init_takes_every_field_and_gives_each_its_own_default(cls, required):
    # These classes write their __init__ out (a compiled build runs @dataclass's as Python),
    # so a field added to the class and not to __init__ would go unset: the two must agree.
    one, two = cls(*required), cls(*required)
    names = [f.name for f in dataclasses.fields(cls)]
    assert dataclasses.replace(one) == one  # every field a keyword of __init__
    assert cls(*[getattr(one, name) for name in names]) == one  # and in the fields' order
    for name in names:  # a mutable default is each instance's own
        if isinstance(getattr(one, name), list | dict):
            assert getattr(one, name) is not getattr(two, name), name
