"""Inputs between partitions: every kind the processor hands on reads back as it left."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from config.loading import load_config
from models.inputs import parse_command, parse_customer_event, parse_receipt
from models.processor import (
    CARD_RECEIPT,
    CARD_RELEASE,
    CLOSE_PERIOD,
    CUSTOMER_EVENT,
    MERGE_AWAY,
    MERGE_IN,
    RECEIPT,
    SET_STATUS,
    Handover,
    Input,
    Origin,
    Release,
    event_input,
    receipt_input,
)
from models.state import CustomerState
from streams.envelope import Envelope, decode_inputs, encode_batch, envelope_of, input_of

CONFIG = load_config()
NOW = datetime(2026, 11, 3, 12, tzinfo=UTC)
ORIGIN = Origin("receipts", 2, 41, 1796000000.5)
RECEIPT_RAW = json.dumps(
    {
        "receipt_id": "R-1",
        "type": "sale",
        "card_number": "7000001",
        "pos_id": "POS7",
        "issued_at": "2026-11-03T12:00:00+01:00",
        "currency": "EUR",
        "total": "12.50",
        "note": 'ä " ünïcode',
    }
).encode()
EVENT_RAW = json.dumps(
    {
        "event_id": "E-1",
        "type": "card_linked",
        "customer_id": "M-1",
        "occurred_at": "2026-11-01T10:00:00+00:00",
        "card_number": "7000001",
    }
)


def travelled(item: Input) -> Input:
    (envelope,) = decode_inputs(encode_batch([envelope_of(item)]))
    return input_of(envelope, CONFIG, NOW)


def test_a_batch_decodes_to_its_envelopes_in_order() -> None:
    envelopes = [Envelope(RECEIPT, f'{{"receipt_id": "R-{n}"}}', ORIGIN._replace(offset=n)) for n in range(3)]
    assert decode_inputs(encode_batch(envelopes)) == envelopes


def test_a_card_receipt_and_its_owner_s_receipt_read_back_as_sent() -> None:
    receipt = parse_receipt(RECEIPT_RAW, CONFIG, NOW)
    key, item = receipt_input(receipt, RECEIPT_RAW, ORIGIN)
    assert (key, item.kind) == ("card:7000001", CARD_RECEIPT)
    back = travelled(item)
    assert (back.kind, back.value, back.origin, back.forwarded) == (CARD_RECEIPT, receipt, ORIGIN, False)
    # The card's partition hands it to the owner: the customer it now counts for travels with it.
    owned = Input(RECEIPT, receipt._replace(customer_id="M-1"), RECEIPT_RAW, ORIGIN, forwarded=True)
    back = travelled(owned)
    assert (back.kind, back.value, back.forwarded) == (RECEIPT, receipt._replace(customer_id="M-1"), True)


def test_events_commands_merges_and_releases_read_back_as_sent() -> None:
    event = parse_customer_event(EVENT_RAW, CONFIG, NOW)
    _, item = event_input(event, EVENT_RAW, ORIGIN)
    assert travelled(item).value == event
    assert travelled(Input(CUSTOMER_EVENT, event, EVENT_RAW, ORIGIN, forwarded=True)).value == event
    away = travelled(Input(MERGE_AWAY, Handover(event, "TMP-1", "M-1"), EVENT_RAW, ORIGIN, forwarded=True))
    assert (away.kind, away.value) == (MERGE_AWAY, Handover(event, "TMP-1", "M-1"))
    donor = CustomerState("TMP-1").to_bytes()
    taken = travelled(Input(MERGE_IN, Handover(event, "TMP-1", "M-1", donor), away.raw, ORIGIN, forwarded=True))
    assert (taken.kind, taken.value) == (MERGE_IN, Handover(event, "TMP-1", "M-1", donor))
    released = travelled(Input(CARD_RELEASE, Release("7000001", "M-1"), None, ORIGIN, forwarded=True))
    assert released.value == Release("7000001", "M-1")
    raw = b'{"command_id": "CP-1", "type": "close_period", "status_system": "monthly_amount", "period": "2026-10"}'
    close = travelled(Input(CLOSE_PERIOD, parse_command(raw, CONFIG, NOW), raw, ORIGIN))
    assert close.value == parse_command(raw, CONFIG, NOW)
    raw = (
        b'{"command_id": "CC-9", "type": "set_status", "customer_id": "M-1",'
        b' "status_system": "monthly_amount", "status": "gold"}'
    )
    # A command without `requested_at` is dated by its first record's time, wherever it is read.
    dated = datetime.fromtimestamp(ORIGIN.timestamp, UTC)
    assert travelled(Input(SET_STATUS, parse_command(raw, CONFIG, dated), raw, ORIGIN)).value == parse_command(
        raw, CONFIG, dated
    )
