"""Receipt parsing: what is accepted, and the message each rejection carries to the dead letters."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from config.loading import load_config
from models.errors import InvalidInput, InvalidPeriod
from models.inputs import (
    ClosePeriod,
    Receipt,
    SetStatus,
    parse_command,
    parse_customer_event,
    parse_receipt,
    receipt_from_object,
    validated_receipt,
)

CONFIG = load_config()
NOW = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)

# The example receipt of CONTRACT.md section 2, verbatim.
CONTRACT_EXAMPLE = """{"receipt_id": "POS7-000123", "type": "sale", "customer_id": "C-42", "card_number": "7000001",
 "pos_id": "POS7", "store_id": "S1", "issued_at": "2026-11-03T12:00:00+01:00",
 "currency": "EUR", "total": "120.50",
 "lines": [{"sku": "A-1", "qty": 2, "price": "60.25"}]}"""


def example(**changes) -> dict:
    data = json.loads(CONTRACT_EXAMPLE)
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def parse(data, now: datetime = NOW) -> Receipt:
    raw = data if isinstance(data, str | bytes) else json.dumps(data)
    return parse_receipt(raw, CONFIG, now)


def rejected(data, now: datetime = NOW) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse(data, now)
    return str(caught.value)


# --- accepted --------------------------------------------------------------------------------


def test_contract_example_is_accepted():
    receipt = parse_receipt(CONTRACT_EXAMPLE.encode(), CONFIG, NOW)
    assert receipt == Receipt(
        receipt_id="POS7-000123",
        type="sale",
        customer_id="C-42",
        card_number="7000001",
        pos_id="POS7",
        store_id="S1",
        issued_at=datetime.fromisoformat("2026-11-03T12:00:00+01:00"),
        currency="EUR",
        total=Decimal("120.50"),
        original_receipt_id=None,
    )
    assert str(receipt.total) == "120.50"
    assert receipt.issued_at.utcoffset() == timedelta(hours=1)


def test_accepts_str_and_bytes_alike():
    assert parse(CONTRACT_EXAMPLE) == parse(CONTRACT_EXAMPLE.encode())


def test_defaults_and_optional_fields():
    receipt = parse(example(type=..., lines=..., store_id=..., card_number=...))
    assert receipt.type == "sale"
    assert receipt.store_id is None
    assert receipt.card_number is None


def test_card_only_is_accepted():
    receipt = parse(example(customer_id=...))
    assert (receipt.customer_id, receipt.card_number) == (None, "7000001")


def test_unknown_fields_are_ignored():
    assert parse(example(loyalty_extra={"x": 1}, cashier="Ann")) == parse(example())


def test_numbers_are_exact_decimals():
    # JSON numbers are read as decimals, never binary floats.
    receipt = parse(CONTRACT_EXAMPLE.replace('"120.50"', "120.50"))
    assert receipt.total == Decimal("120.50")
    receipt = parse(example(total="0.30", lines=[{"qty": 3, "price": "0.10"}]))
    assert receipt.total == Decimal("0.30")
    # A fractional quantity as a JSON number too (0.1 has no exact binary float): 0.1 kg at 3.00.
    weighed = CONTRACT_EXAMPLE.replace('"120.50"', '"0.30"').replace(
        '"qty": 2, "price": "60.25"', '"qty": 0.1, "price": "3.00"'
    )
    assert parse(weighed).total == Decimal("0.30")


def test_a_number_with_many_digits_is_read_exactly_and_judged():
    # 0.1 + 0.2 style amounts as JSON numbers: exact, and too many decimals is an error, not rounding.
    line = '[{"qty": 3, "price": 0.10}]'
    receipt = parse(
        CONTRACT_EXAMPLE.replace('"120.50"', "0.30").replace('[{"sku": "A-1", "qty": 2, "price": "60.25"}]', line)
    )
    assert receipt.total == Decimal("0.30")
    assert "more than two decimal places" in rejected(CONTRACT_EXAMPLE.replace('"120.50"', "120.505"))
    # An integer beyond 64 bits, which the fast JSON reader refuses, is read and judged as an amount.
    assert "the largest amount" in rejected(CONTRACT_EXAMPLE.replace('"120.50"', str(10**30)))


def test_deeply_nested_json_is_refused_not_a_crash():
    deep = '{"receipt_id": "x", "extra": ' + "[" * 5000 + "]" * 5000 + "}"
    assert rejected(deep).startswith("not JSON")


def test_a_return():
    receipt = parse(
        example(receipt_id="POS7-000124", type="return", total="60.25", lines=..., original_receipt_id="POS7-000123")
    )
    assert (receipt.type, receipt.total, receipt.original_receipt_id) == ("return", Decimal("60.25"), "POS7-000123")


def test_exactly_one_day_ahead_is_accepted():
    receipt = parse(example(issued_at="2026-11-04T12:00:00+00:00"))
    assert receipt.issued_at == NOW + timedelta(days=1)


def test_old_receipts_are_accepted_by_the_parser():
    assert parse(example(issued_at="2025-01-01T00:00:00+01:00")).issued_at.year == 2025


# --- rejected --------------------------------------------------------------------------------


def test_not_json():
    assert rejected("this is not json").startswith("not JSON")
    assert rejected(b"\xff\xfe{").startswith("not JSON")
    assert rejected('{"receipt_id": "x",').startswith("not JSON")


def test_empty_value():
    with pytest.raises(InvalidInput, match="empty value"):
        parse_receipt(None, CONFIG, NOW)


def test_json_array():
    assert rejected("[1, 2, 3]") == "expected a JSON object, got list"
    assert rejected('"receipt"') == "expected a JSON object, got str"
    assert rejected("null") == "expected a JSON object, got NoneType"


def test_missing_receipt_id():
    assert rejected(example(receipt_id=...)) == "receipt_id: required"
    assert rejected(example(receipt_id="")) == "receipt_id: required"


def test_missing_pos_id():
    assert rejected(example(pos_id=...)) == "pos_id: required"


def test_neither_customer_nor_card():
    message = rejected(example(customer_id=..., card_number=...))
    assert message.startswith("customer_id, card_number: at least one is required")
    message = rejected(example(customer_id=None, card_number=""))
    assert message.startswith("customer_id, card_number: at least one is required")


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("receipt_id", 123, "receipt_id: must be a string, got 123"),
        ("customer_id", 42, "customer_id: must be a string, got 42"),
        ("card_number", 7000001, "card_number: must be a string, got 7000001"),
        ("pos_id", ["POS7"], "pos_id: must be a string"),
        ("type", "refund", "type: must be 'sale' or 'return', got 'refund'"),
        ("total", True, 'total: must be a decimal amount like "12.50", got True'),
        ("total", [1], 'total: must be a decimal amount like "12.50"'),
        ("total", None, 'total: must be a decimal amount like "12.50", got None'),
        ("total", "12,50", "total: '12,50' is not a decimal amount"),
        ("total", "NaN", "total: 'NaN' is not a decimal amount"),
        ("total", "Infinity", "total: 'Infinity' is not a decimal amount"),
        ("issued_at", 1762167600, "issued_at: must be an ISO-8601 timestamp with offset, got 1762167600"),
        ("issued_at", "yesterday", "issued_at: 'yesterday' is not an ISO-8601 timestamp"),
        ("lines", "A-1 x2", "lines: must be a list"),
        ("lines", ["A-1"], "lines[0]: must be an object"),
        ("lines", [{"qty": 0, "price": "1.00"}], "lines[0].qty: must be a positive number up to 1,000,000, got 0"),
        ("lines", [{"qty": True, "price": "1.00"}], "lines[0].qty: must be a positive number, got True"),
        ("lines", [{"qty": "2", "price": "60.25"}], "lines[0].qty: must be a positive number, got '2'"),
        ("lines", [{"qty": 2, "price": 60}], "lines: add up to 120.00, but total is 120.50"),
        ("lines", [{"qty": 2}], 'lines[0].price: must be a decimal amount like "12.50", got None'),
        ("lines", [{"qty": 2, "price": "-60.25"}], "lines[0].price: -60.25 is negative"),
    ],
)
def test_wrong_types(field, value, fragment):
    assert fragment in rejected(example(**{field: value}))


def test_overlong_text():
    assert rejected(example(receipt_id="R" * 201)) == "receipt_id: longer than 200 characters"
    assert parse(example(receipt_id="R" * 200)).receipt_id == "R" * 200


def test_negative_total():
    message = rejected(example(total="-120.50", lines=...))
    assert message == "total: -120.50 is negative; send a return with original_receipt_id instead"


def test_more_than_two_decimals():
    assert rejected(example(total="120.505", lines=...)) == "total: 120.505 has more than two decimal places"
    assert "has more than two decimal places" in rejected(CONTRACT_EXAMPLE.replace('"120.50"', "120.501"))
    # Trailing zeros are fine.
    assert parse(example(total="120.500")).total == Decimal("120.50")


def test_an_amount_read_again_is_judged_and_shown_as_the_first_time():
    # Amounts are remembered by their text (`parse_money`): the same text reads the same, its
    # digits kept, and a refused text is refused every time, never remembered.
    for _ in range(2):
        assert str(parse(example(total="120.500", lines=...)).total) == "120.500"
        assert str(parse(example(total="120.5", lines=...)).total) == "120.5"
        assert rejected(example(total="120.505", lines=...)) == "total: 120.505 has more than two decimal places"
        assert "is negative" in rejected(example(total="-120.50", lines=...))


def test_lines_not_adding_up():
    message = rejected(example(lines=[{"sku": "A-1", "qty": 2, "price": "60.00"}]))
    assert message == "lines: add up to 120.00, but total is 120.50"
    message = rejected(example(lines=[{"qty": 1, "price": "60.25"}, {"qty": 1, "price": "60.26"}]))
    assert message == "lines: add up to 120.51, but total is 120.50"


def test_lines_adding_up_in_several_lines():
    data = example(lines=[{"qty": 1, "price": "60.25"}, {"price": "50.00"}, {"qty": 2, "price": "5.125"}])
    # 5.125 has three decimals: a line price is money too.
    assert "lines[2].price: 5.125 has more than two decimal places" in rejected(data)
    data = example(lines=[{"qty": 1, "price": "60.25"}, {"price": "50.00"}, {"qty": 2, "price": "5.12"}])
    assert rejected(data) == "lines: add up to 120.49, but total is 120.50"
    data = example(lines=[{"qty": 1, "price": "60.25"}, {"price": "50.00"}, {"qty": 1, "price": "10.25"}])
    assert parse(data).total == Decimal("120.50")


@pytest.mark.parametrize("currency", ["USD", "eur", None, 978])
def test_unknown_currency(currency):
    message = rejected(example(currency=currency))
    assert message == f"currency: {currency!r} is not the programme's currency 'EUR'"


def test_missing_currency():
    assert rejected(example(currency=...)) == "currency: None is not the programme's currency 'EUR'"


def test_timestamp_without_offset():
    message = rejected(example(issued_at="2026-11-03T12:00:00"))
    assert message == "issued_at: '2026-11-03T12:00:00' has no UTC offset; send e.g. 2026-11-03T12:00:00+01:00"
    assert "has no UTC offset" in rejected(example(issued_at="2026-11-03"))


def test_timestamp_variants_with_offset_are_accepted():
    assert parse(example(issued_at="2026-11-03T11:00:00Z")).issued_at == datetime(2026, 11, 3, 11, tzinfo=UTC)
    assert parse(example(issued_at="2026-11-03T06:00:00-05:00")).issued_at == datetime(2026, 11, 3, 11, tzinfo=UTC)


def test_value_over_one_megabyte():
    big = json.dumps(example(padding="x" * 1_000_000)).encode()
    assert len(big) > 1_000_000
    message = rejected(big)
    assert message == f"value of {len(big)} bytes is larger than the 1000000-byte limit"


def test_value_just_under_one_megabyte_is_parsed():
    data = example()
    data["padding"] = ""
    size = len(json.dumps(data).encode())
    data["padding"] = "x" * (1_000_000 - size)
    raw = json.dumps(data).encode()
    assert len(raw) == 1_000_000
    assert parse(raw).receipt_id == "POS7-000123"


def test_issued_more_than_a_day_in_the_future():
    message = rejected(example(issued_at="2026-11-04T12:00:01+00:00"))
    assert message.startswith("issued_at: 2026-11-04T12:00:01+00:00 is more than 1 day, 0:00:00 ahead of the clock")
    assert "ahead of the clock" in rejected(example(issued_at="2027-01-01T00:00:00+01:00"))


@pytest.mark.parametrize(
    ("issued_at", "refused"),
    [
        ("2026-11-04T12:00:00+00:00", False),  # exactly the tolerance ahead: accepted
        ("2026-11-04T12:00:00.000001+00:00", True),  # a microsecond more
        ("2026-11-04T11:59:59.500000+00:00", False),  # within the second the epoch test leaves to datetimes
        ("2026-11-04T11:59:58+00:00", False),
        ("2026-11-03T11:00:00+00:00", False),
        ("2026-12-04T12:00:00+00:00", True),
    ],
)
def test_the_arrival_as_epoch_seconds_judges_a_receipt_as_the_arrival_as_a_datetime(issued_at, refused):
    """A replay gives each receipt's arrival as epoch seconds (the broker's timestamp), and the
    tolerance is judged on those unless the receipt lies within a second of it."""
    raw = json.dumps(example(issued_at=issued_at)).encode()
    answers = []
    for now in (NOW, NOW.timestamp()):
        try:
            receipt_from_object(json.loads(raw), raw, CONFIG, now)
            answers.append(False)
        except InvalidInput as exc:
            assert "ahead of the clock" in str(exc)
            answers.append(True)
    assert answers == [refused, refused]


@pytest.mark.parametrize("customer_id", ["card:4000123", "partition:0", "partition:"])
def test_a_customer_id_in_the_customers_tables_reserved_keys_is_refused(customer_id):
    prefix = customer_id[: customer_id.index(":") + 1]
    message = f"customer_id: may not start with {prefix!r}, got {customer_id!r}"
    assert rejected(example(customer_id=customer_id)) == message
    event = {"event_id": "E-1", "type": "registered", "customer_id": customer_id, "occurred_at": NOW.isoformat()}
    with pytest.raises(InvalidInput) as refused:
        parse_customer_event(json.dumps(event).encode(), CONFIG, NOW)
    assert str(refused.value) == message


def test_a_customer_id_that_only_contains_a_reserved_prefix_is_accepted():
    assert parse(example(customer_id="C-card:1")).customer_id == "C-card:1"


def test_return_needs_its_original():
    assert rejected(example(type="return", lines=...)) == "original_receipt_id: required"


def test_return_of_nothing():
    data = example(type="return", total="0", lines=..., original_receipt_id="POS7-000123")
    assert rejected(data) == "total: a return must return a positive amount"


# --- commands --------------------------------------------------------------------------------


def test_close_period_command():
    raw = json.dumps(
        {"command_id": "CC-1", "type": "close_period", "status_system": "monthly_amount", "period": "2026-11"}
    )
    assert parse_command(raw, CONFIG, NOW) == ClosePeriod("CC-1", "monthly_amount", "2026-11")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"status_system": "weekly"}, "status_system: unknown status system 'weekly'"),
        ({"period": "2026-13"}, "'2026-13' is not a month id"),
        ({"period": "2026-W45"}, "'2026-W45' is not a month id"),
        ({"type": "launch"}, "type: unknown command 'launch'"),
        ({"command_id": None}, "command_id: required"),
    ],
)
def test_bad_close_period_command(changes, fragment):
    data = {"command_id": "CC-1", "type": "close_period", "status_system": "monthly_amount", "period": "2026-11"}
    data.update(changes)
    with pytest.raises(InvalidInput) as caught:
        parse_command(json.dumps(data), CONFIG, NOW)
    assert fragment in str(caught.value)
    if "period" in changes:
        assert isinstance(caught.value, InvalidPeriod)


SET_STATUS = {
    "command_id": "CC-9",
    "type": "set_status",
    "customer_id": "C-42",
    "status_system": "monthly_amount",
    "status": "gold",
    "valid_until": "2026-12-31",
    "reason": "wrong status fixed",
    "operator": "agent-17",
}


def test_set_status_command_is_dated_by_its_record_when_it_has_no_requested_at():
    command = parse_command(json.dumps(SET_STATUS), CONFIG, NOW)
    assert command == SetStatus(
        command_id="CC-9",
        customer_id="C-42",
        status_system="monthly_amount",
        status="gold",
        valid_until=date(2026, 12, 31),
        reason="wrong status fixed",
        operator="agent-17",
        source="manual",
        requested_at=NOW,
    )
    dated = parse_command(json.dumps(SET_STATUS | {"requested_at": "2026-11-05T10:00:00+01:00"}), CONFIG, NOW)
    assert isinstance(dated, SetStatus)
    assert dated.requested_at == datetime.fromisoformat("2026-11-05T10:00:00+01:00")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"status": "platinum"}, "status: 'platinum' is not a level of 'monthly_amount' (bronze, silver, gold)"),
        ({"status": None}, "status: required"),
        ({"customer_id": None}, "customer_id: required"),
        ({"valid_until": "31.12.2026"}, "valid_until: must be a date like 2026-12-31, got '31.12.2026'"),
        ({"source": "robot"}, "source: must be 'manual' or 'batch'"),
    ],
)
def test_bad_set_status_command(changes, fragment):
    with pytest.raises(InvalidInput) as caught:
        parse_command(json.dumps(SET_STATUS | changes), CONFIG, NOW)
    assert fragment in str(caught.value)


# --- the second reading, on the partition that takes a receipt handed on -----------------------

#: Texts an id may hold: no control characters or surrogates (those are refused).
TEXT = st.characters(blacklist_categories=("Cc", "Cs"))


@settings(max_examples=300, deadline=None)
@given(
    cents=st.integers(min_value=1, max_value=10**10),
    as_number=st.booleans(),
    kind=st.sampled_from(["sale", "return", None]),
    customer=st.one_of(st.none(), st.just(""), st.text(TEXT, min_size=1, max_size=12)),
    card=st.one_of(st.none(), st.just(""), st.from_regex(r"[0-9]{4,10}", fullmatch=True)),
    store=st.one_of(st.none(), st.just(""), st.text(TEXT, max_size=8)),
    offset=st.sampled_from(["+01:00", "Z", "-05:30", "+00:00"]),
    extra=st.dictionaries(
        st.text(max_size=5), st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text())
    ),
)
def test_a_validated_receipt_reads_as_parse_receipt_read_it(
    cents, as_number, kind, customer, card, store, offset, extra
):
    total = Decimal(cents) / 100
    data = {**extra, **example(lines=..., store_id=store, customer_id=customer, card_number=card)}
    data["issued_at"] = f"2026-11-03T10:00:00{offset}"
    if kind is not None:
        data["type"] = kind
    if kind == "return":
        data["original_receipt_id"] = "POS7-000001"
    data["total"] = "__TOTAL__"
    raw = json.dumps(data).replace('"__TOTAL__"', f"{total}" if as_number else f'"{total}"')
    try:
        first = parse_receipt(raw, CONFIG, NOW)
    except InvalidInput:
        assume(False)
    assert validated_receipt(raw) == first
