"""The strict boundary: inputs that once crashed a worker, vanished, or wedged a sink are
refused with a reason (each case below was accepted, or raised something else, before)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from config.loading import load_config
from models.errors import InvalidInput, InvalidPeriod
from models.inputs import parse_command, parse_customer_event, parse_receipt
from models.periods import PeriodKind, parse_period

CONFIG = load_config()
NOW = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)

RECEIPT = (
    '{"receipt_id": "POS7-000123", "type": "sale", "customer_id": "C-42", "pos_id": "POS7", "store_id": "S1",'
    ' "issued_at": "2026-11-03T12:00:00+01:00", "currency": "EUR", "total": "120.50",'
    ' "lines": [{"sku": "A-1", "qty": 2, "price": "60.25"}]}'
)
EVENT = (
    '{"event_id": "E-1", "type": "registered", "customer_id": "C-42", "occurred_at": "2025-05-01T10:00:00+00:00",'
    ' "birth_date": "1990-11-25", "channel": "pos"}'
)
COMMAND = (
    '{"command_id": "CC-9", "type": "set_status", "customer_id": "C-42", "status_system": "monthly_amount",'
    ' "status": "gold", "valid_until": "2026-12-31", "reason": "wrong status fixed", "operator": "agent-17"}'
)


def receipt_refused(raw: str | bytes) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_receipt(raw, CONFIG, NOW)
    return str(caught.value)


def event_refused(raw: str | bytes) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_customer_event(raw, CONFIG, NOW)
    return str(caught.value)


def command_refused(raw: str | bytes) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_command(raw, CONFIG, NOW)
    return str(caught.value)


def test_the_untouched_examples_are_accepted() -> None:
    assert parse_receipt(RECEIPT, CONFIG, NOW).pos_id == "POS7"
    assert parse_customer_event(EVENT, CONFIG, NOW).channel == "pos"
    assert parse_command(COMMAND, CONFIG, NOW).command_id == "CC-9"  # type: ignore[union-attr]


# --- 1. poison pills: lone surrogates, invalid UTF-8 -----------------------------------------


@pytest.mark.parametrize("field", ["pos_id", "receipt_id", "customer_id", "store_id", "card_number"])
def test_a_lone_surrogate_escaped_in_a_receipt_id_is_refused(field: str) -> None:
    data = json.loads(RECEIPT)
    data[field] = "X"
    raw = json.dumps(data).replace('"X"', '"POS\\udfff"')
    assert "not JSON" in receipt_refused(raw)
    assert "not JSON" in receipt_refused(raw.encode())


def test_a_lone_surrogate_in_a_text_given_as_str_is_refused() -> None:
    # A record already decoded (a forwarded input) can carry one as a character, not an escape.
    assert "not JSON" in receipt_refused(RECEIPT.replace('"POS7"', '"POS\udfff"'))


def test_invalid_utf8_bytes_in_a_customer_event_are_refused() -> None:
    raw = EVENT.encode().replace(b'"pos"', b'"p\xff\xfeos"')
    assert "not JSON" in event_refused(raw)


def test_a_surrogate_in_a_customer_event_or_command_is_refused() -> None:
    assert "not JSON" in event_refused(EVENT.replace('"C-42"', '"C-\\ud800"'))
    assert "not JSON" in command_refused(COMMAND.replace('"agent-17"', '"agent-\\udc00"'))


# --- 2. silent drops: NaN, Infinity, huge numbers, other encodings ----------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_bare_nan_and_infinity_in_amounts_and_quantities_are_refused(literal: str) -> None:
    assert "not JSON" in receipt_refused(RECEIPT.replace('"120.50"', literal))
    assert "not JSON" in receipt_refused(RECEIPT.replace('"price": "60.25"', f'"price": {literal}'))
    assert "not JSON" in receipt_refused(RECEIPT.replace('"qty": 2', f'"qty": {literal}'))


def test_a_quantity_beyond_any_line_is_refused() -> None:
    assert "not JSON" in receipt_refused(RECEIPT.replace('"qty": 2', '"qty": 1e400'))
    assert "more than 6 decimal places" in receipt_refused(RECEIPT.replace('"qty": 2', '"qty": 1e-400'))
    assert "up to 1,000,000" in receipt_refused(RECEIPT.replace('"qty": 2', '"qty": 1e200'))
    assert "up to 1,000,000" in receipt_refused(RECEIPT.replace('"qty": 2', f'"qty": {10**30}'))
    assert "up to 1,000,000" in receipt_refused(RECEIPT.replace('"qty": 2', '"qty": 1000001'))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-16-le", "utf-8-sig"])
def test_a_receipt_in_another_encoding_or_with_a_byte_order_mark_is_refused(encoding: str) -> None:
    assert "not JSON" in receipt_refused(RECEIPT.encode(encoding))


@pytest.mark.parametrize(
    "amount", [" 120.50", "120.50 ", "1_20.50", "\u0661\u0662\u0660\u066b\u0665\u0660", "1.2050e2", "+120.50", "0x78"]
)
def test_an_amount_is_ascii_digits_with_a_fraction_and_nothing_else(amount: str) -> None:
    assert "is not a decimal amount" in receipt_refused(RECEIPT.replace('"120.50"', json.dumps(amount)))


def test_a_name_given_twice_in_one_object_is_refused() -> None:
    twice = RECEIPT.replace('"total": "120.50"', '"total": "120.50", "total": "1.00"')
    assert receipt_refused(twice) == "total: appears more than once in one object"
    in_a_line = RECEIPT.replace('"qty": 2', '"qty": 2, "qty": 3')
    assert receipt_refused(in_a_line) == "qty: appears more than once in one object"
    assert "appears more than once" in event_refused(
        EVENT.replace('"channel": "pos"', '"channel": "pos", "channel" : "app"')
    )
    # A quote escaped inside a text, followed by a colon, is not a name.
    tricky = json.loads(RECEIPT)
    tricky["note"] = 'he said "x": ok'
    assert parse_receipt(json.dumps(tricky), CONFIG, NOW).receipt_id == "POS7-000123"


def test_nesting_deeper_than_any_input_is_refused() -> None:
    deep = RECEIPT.replace('"store_id": "S1"', '"extra": ' + "[" * 40 + "]" * 40)
    assert "nested more than" in receipt_refused(deep)


# --- 3. values a sink cannot store: NUL and other control characters --------------------------


@pytest.mark.parametrize("escape", ["\\u0000", "\\u001b", "\\u0007", "\\u007f", "\\u0085", "\\n", "\\t"])
def test_control_characters_in_ids_are_refused(escape: str) -> None:
    reason = receipt_refused(RECEIPT.replace('"POS7-000123"', f'"POS7{escape}123"'))
    assert reason.startswith("receipt_id: contains U+") and "control character" in reason
    assert "control character" in event_refused(EVENT.replace('"E-1"', f'"E{escape}1"'))
    assert "control character" in command_refused(COMMAND.replace('"wrong status fixed"', f'"wrong{escape}"'))


def test_printable_text_beyond_ascii_is_accepted() -> None:
    data = json.loads(COMMAND)
    data["reason"] = "Kundin bat um Korrektur\u00a0\u2013 Gold \U0001f947 \u00fc"
    assert parse_command(json.dumps(data), CONFIG, NOW).reason == data["reason"]  # type: ignore[union-attr]


# --- 4. dates out of range -----------------------------------------------------------------


@pytest.mark.parametrize(
    "issued_at", ["0001-01-01T00:00:00+14:00", "0001-01-01T12:00:00+00:00", "1969-12-31T23:59:59+00:00"]
)
def test_an_instant_before_1970_is_refused(issued_at: str) -> None:
    assert "is not between 1970" in receipt_refused(RECEIPT.replace("2026-11-03T12:00:00+01:00", issued_at))


def test_an_instant_with_anything_after_it_is_refused() -> None:
    for tail in ("\\u0000", "\\u0000garbage", " ", "\\u00a0"):
        reason = receipt_refused(RECEIPT.replace("+01:00", "+01:00" + tail))
        assert reason.startswith("issued_at: ") and "ISO-8601 timestamp" in reason, reason


def test_an_instant_at_the_end_of_the_calendar_is_refused() -> None:
    event = EVENT.replace("2025-05-01T10:00:00+00:00", "9999-12-31T23:59:59-14:00")
    assert "is not between 1970" in event_refused(event)


def test_a_period_out_of_range_is_refused() -> None:
    close = '{"command_id": "CP-1", "type": "close_period", "status_system": "monthly_amount", "period": "%s"}'
    assert "is not between 1970 and 2200" in command_refused(close % "0001-01")
    assert "is not a month id" in command_refused(close % "1-01")
    assert "is not a month id" in command_refused(close % "\uff12\uff10\uff12\uff16-11")  # digits of another script
    with pytest.raises(InvalidPeriod):
        parse_period(PeriodKind.MONTH, "2026-11\n")  # `$` once let a trailing newline through


# --- 5. lax fields: dates read whole --------------------------------------------------------


def test_a_birth_date_with_anything_after_it_is_refused() -> None:
    reason = event_refused(EVENT.replace('"1990-11-25"', '"1990-11-25xyz"'))
    assert reason == "birth_date: must be a date like 2026-12-31, got '1990-11-25xyz'"
    assert "is not between 1900" in event_refused(EVENT.replace('"1990-11-25"', '"1899-12-31"'))


def test_a_valid_until_with_anything_after_it_is_refused() -> None:
    reason = command_refused(COMMAND.replace('"2026-12-31"', '"2026-12-31garbage"'))
    assert reason == "valid_until: must be a date like 2026-12-31, got '2026-12-31garbage'"
    assert "must be a date like" in command_refused(COMMAND.replace('"2026-12-31"', '"20261231"'))
