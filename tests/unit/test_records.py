"""A fetch's records through the processor (models/records.py): routed, taken, their events sent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from config.loading import load_config
from models.errors import InvalidInput
from models.events import ERASED_RECEIPTS, Output, OutputKind
from models.processor import Origin, Outcome, TableProcessor
from models.records import parse_all, route_receipts, send_events, send_snapshots, take_all
from streams.envelope import partition_for
from streams.live import LiveStates
from streams.store import MemoryBacking

CONFIG = load_config()
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
PARTITIONS = 4
PASSES = (OSError,)


@dataclass
class Record:
    value: bytes | None
    key: bytes | None
    offset: int
    timestamp: int


def receipt(receipt_id: str, customer_id: str, total: str = "12.00") -> bytes:
    value = {
        "receipt_id": receipt_id,
        "type": "sale",
        "customer_id": customer_id,
        "pos_id": "POS7",
        "store_id": "S1",
        "issued_at": "2026-11-30T10:00:00+01:00",
        "currency": "EUR",
        "total": total,
    }
    return json.dumps(value).encode()


def partitioner(key: str) -> int:
    if key == "C-BUG":
        raise RuntimeError("no partition for C-BUG")
    if key == "C-NET":
        raise OSError("the network went")
    return partition_for(key, PARTITIONS)


def processor(table: Any = None) -> TableProcessor:
    live = table if table is not None else LiveStates(MemoryBacking({}))
    return TableProcessor(CONFIG, partitioner, PARTITIONS, table=live, spill_receipts=True)


def customers_on(partition: int, wanted: int) -> list[str]:
    found = [f"C-{n}" for n in range(100) if partition_for(f"C-{n}", PARTITIONS) == partition]
    return found[:wanted]


def test_receipts_are_taken_where_their_customer_is_and_handed_on_where_not() -> None:
    here, there = customers_on(1, 1)[0], customers_on(2, 1)[0]
    records = [
        Record(receipt("R-1", here), b"k1", 10, 1_764_496_800_000),
        Record(receipt("R-2", there), None, 11, 1_764_496_801_000),
        Record(b'{"receipt_id": "R-3"', b"k3", 12, 0),
        Record(receipt("R-4", "C-BUG"), b"k4", 13, 0),
    ]
    routed = route_receipts(records, "receipts", 1, CONFIG, NOW, processor(), True, PASSES)
    assert [(item.value.receipt_id, item.origin) for item in routed.here] == [
        ("R-1", ("receipts", 1, 10, 1_764_496_800.0))
    ]
    assert [(target, item.value.receipt_id) for target, item in routed.away] == [(2, "R-2")]
    [(value, key, origin, reason)] = routed.refused
    assert (value, key, origin.offset) == (b'{"receipt_id": "R-3"', b"k3", 12)
    assert "JSON" in reason or "json" in reason
    [(value, key, origin, exc)] = routed.failed
    assert (key, origin.offset, str(exc)) == (b"k4", 13, "no partition for C-BUG")
    # Where receipts are not to be taken where they are read, every one is handed on.
    routed = route_receipts(records[:2], "receipts", 1, CONFIG, NOW, processor(), False, PASSES)
    assert not routed.here
    assert [(target, item.value.receipt_id) for target, item in routed.away] == [(1, "R-1"), (2, "R-2")]


def test_what_is_not_the_input_s_fault_is_raised_not_dead_lettered() -> None:
    with pytest.raises(OSError, match="the network went"):
        route_receipts(
            [Record(receipt("R-1", "C-NET"), None, 0, 0)], "receipts", 0, CONFIG, NOW, processor(), True, PASSES
        )


def test_any_parse_sorts_a_partition_s_records_into_parsed_refused_and_failed() -> None:
    """What customer events and commands go through: the parse is the caller's."""

    def parse(value: bytes | None, origin: Origin) -> tuple[str, float]:
        if value == b"bad":
            raise InvalidInput("not an event")
        if value == b"bug":
            raise KeyError("a bug")
        if value == b"net":
            raise OSError("the network went")
        assert value is not None
        return value.decode(), origin.timestamp

    records = [
        Record(b"E-1", b"k1", 5, 2_000),
        Record(b"bad", b"k2", 6, 0),
        Record(b"bug", b"k3", 7, 0),
        Record(b"E-2", None, 8, 3_500),
    ]
    parsed = parse_all(records, "customer-events", 3, parse, PASSES)
    assert parsed.parsed == [("E-1", 2.0), ("E-2", 3.5)]
    assert [(value, key, origin, reason) for value, key, origin, reason in parsed.refused] == [
        (b"bad", b"k2", ("customer-events", 3, 6, 0.0), "not an event")
    ]
    [(value, key, origin, exc)] = parsed.failed
    assert (value, key, origin.offset, type(exc)) == (b"bug", b"k3", 7, KeyError)
    with pytest.raises(OSError, match="the network went"):
        parse_all([*records, Record(b"net", None, 9, 0)], "customer-events", 3, parse, PASSES)


class BrokenTable(LiveStates):
    """A table whose read of one customer raises, as a bug in the rules would."""

    def get(self, key: bytes, decode: Any) -> Any:
        if key == b"C-BAD":
            raise KeyError("C-BAD")
        return super().get(key, decode)


def test_taking_stops_at_an_input_that_raises_and_poisons_it() -> None:
    table = BrokenTable(MemoryBacking({}))
    proc = processor(table)
    good = customers_on(0, 2)
    raws = [receipt("R-1", good[0]), receipt("R-2", good[1]), receipt("R-3", "C-BAD"), receipt("R-4", good[0])]
    records = [Record(raw, None, n, 1_764_496_800_000 + n) for n, raw in enumerate(raws)]
    items = route_receipts(records, "receipts", 0, CONFIG, NOW, proc, False, PASSES).away
    inputs = [item for _, item in items]
    poison: set[tuple[str, str, int, int]] = {("receipt", "receipts", 0, 1)}  # R-2 failed before
    out = Outcome()
    taken = take_all(proc, 0, inputs, out, poison, PASSES)
    assert taken.count == 1  # R-1; R-2 skipped; R-3 raised; R-4 not reached
    assert taken.failed is inputs[2] and isinstance(taken.error, KeyError)
    assert ("receipt", "receipts", 0, 2) in poison
    assert [(item.value.receipt_id, reason) for item, reason in out.refused] == [("R-3", "KeyError: 'C-BAD'")]
    # The one receipt taken made one message: its Kafka timestamp is the message's sending age's start.
    assert taken.sent_at == [1_764_496_800.0]
    messages = [o for o in out.outputs if o.kind is OutputKind.RECEIPT_MESSAGE]
    assert len(messages) == 1
    # Taken again, the poisoned inputs are skipped and the rest taken.
    out = Outcome()
    taken = take_all(proc, 0, inputs[3:], out, poison, PASSES)
    assert (taken.count, taken.failed) == (1, None)


def test_events_are_sent_and_snapshots_wait_for_the_commit_but_an_erasing_one() -> None:
    def snapshot(key: str, **value: Any) -> Output:
        return Output(OutputKind.CUSTOMER_STATUS, key, {"customer_id": key, **value})

    change = Output(
        OutputKind.STATUS_CHANGE, "C-1", {"status_system": "s", "direction": "up", "current": "gold", "n": 1}
    )
    offers = [Output(OutputKind.OFFER_TRIGGER, "C-1", {"offer_id": "o1"}) for _ in range(2)]
    outputs = [snapshot("C-1", n=1), change, *offers, snapshot("C-1", n=2), snapshot("C-2", n=1)]
    erasing = snapshot("C-2", **{ERASED_RECEIPTS: ["R-9"]})
    waiting: dict[str | None, Output] = {}
    sent_records: list[tuple[str, bytes | None, bytes]] = []
    topics = {kind: f"topic-{kind.value}" for kind in OutputKind}
    sent = send_events(
        [*outputs, erasing], waiting, topics, lambda topic, key, value: sent_records.append((topic, key, value))
    )
    assert [(topic, key, orjson.loads(value)) for topic, key, value in sent_records] == [
        ("topic-status_change", b"C-1", change.value),
        ("topic-offer_trigger", b"C-1", {"offer_id": "o1"}),
        ("topic-offer_trigger", b"C-1", {"offer_id": "o1"}),
        ("topic-customer_status", b"C-2", erasing.value),
    ]
    assert {key: value.value["n"] for key, value in waiting.items()} == {"C-1": 2}  # C-2's erasing one went
    assert sent.kinds == {OutputKind.STATUS_CHANGE: 1, OutputKind.OFFER_TRIGGER: 2, OutputKind.CUSTOMER_STATUS: 1}
    assert sent.changes == {("s", "up", "gold"): 1}
    assert sent.offers == {"o1": 2}
    # At the commit: each customer's latest, keyed by the customer, and none left waiting.
    sent_records.clear()
    assert send_snapshots(waiting, "topic-customer_status", lambda *record: sent_records.append(record)) == 1
    assert [(topic, key, orjson.loads(value)) for topic, key, value in sent_records] == [
        ("topic-customer_status", b"C-1", {"customer_id": "C-1", "n": 2})
    ]
    assert not waiting
