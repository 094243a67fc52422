"""The worker's collector (streams/collector.py), and the live path's promise it rests on:
the partition processor, the record cache and the events' encoding make no reference cycles."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from config.loading import load_config
from models.events import Output, OutputKind
from models.inputs import parse_command, parse_customer_event
from models.processor import CLOSE_PERIOD, SET_STATUS, Input, Origin, Outcome, TableProcessor, event_input
from models.records import route_receipts, send_events, take_all
from streams.collector import Collector
from streams.live import LiveStates
from streams.store import MemoryBacking

CONFIG = load_config()
NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
TOPICS = {kind: kind.value for kind in OutputKind}


@dataclass
class Record:
    value: bytes
    key: bytes | None
    offset: int
    timestamp: int


@pytest.fixture
def collector_state() -> Iterator[None]:
    """Whatever a test does to the collector is undone after it."""
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    if enabled:
        gc.enable()


class Cycle:
    """An object that refers to itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_what_a_commit_leaves_is_frozen_until_the_full_collection(collector_state: None) -> None:
    now = [100.0]
    collector = Collector(threshold=12_345, full_every=60.0, clock=lambda: now[0])
    collector.start()
    assert gc.get_threshold()[0] == 12_345
    assert gc.get_freeze_count() > 0

    cycle = Cycle()
    gone = weakref.ref(cycle)
    collector.committed()  # the cycle is alive at the commit: frozen with the rest
    del cycle
    gc.collect()
    assert gone() is not None, "a frozen object was walked"
    now[0] += 59.0
    collector.committed()
    gc.collect()
    assert gone() is not None and collector.full_collections == 0

    now[0] += 1.0
    collector.committed()
    assert gone() is None, "the full collection did not free a cycle frozen earlier"
    assert collector.full_collections == 1
    assert gc.get_freeze_count() > 0, "what is alive after the full collection is frozen again"


def _receipt(n: int, customer: str, at: datetime, total: str, **extra: Any) -> bytes:
    value = {
        "receipt_id": f"POS7-{n:06d}",
        "type": "sale",
        "customer_id": customer,
        "pos_id": "POS7",
        "store_id": "S1",
        "issued_at": at.isoformat(),
        "currency": "EUR",
        "total": total,
        "lines": [{"sku": "A-1", "qty": 1, "price": total}],
    } | extra
    return json.dumps(value).encode()


def _receipts() -> list[Record]:
    """Sales across a month end for a handful of customers (upgrades, offers, messages), a POS
    resend, a return, an anonymous sale by an unknown card."""
    values: list[bytes] = []
    start = datetime(2026, 11, 20, 10, tzinfo=UTC)
    for n in range(300):
        at = start + timedelta(hours=n)
        values.append(_receipt(n, f"C-{n % 7}", at, f"{40 + n % 90}.50"))
    values.append(values[10])  # a resend
    returned = {"type": "return", "original_receipt_id": "POS7-000003"}
    values.append(_receipt(900, "C-3", start + timedelta(days=11), "12.00", **returned))
    anonymous = json.loads(_receipt(901, "C-0", start, "9.90"))
    del anonymous["customer_id"]
    values.append(json.dumps(anonymous | {"card_number": "7009999"}).encode())
    return [Record(v, None, n, int(NOW.timestamp() * 1000)) for n, v in enumerate(values)]


def _others() -> list[Input]:
    """Customer events (a card issued and linked: a merge; an exclusion: erasure) and commands."""
    origin = Origin("customer-events", 0, 0, NOW.timestamp())
    inputs: list[Input] = []
    for n, event in enumerate(
        [
            {"type": "card_issued", "customer_id": "T-1", "card_number": "7001234"},
            {"type": "registered", "customer_id": "C-1", "birth_date": "1990-12-03", "channel": "pos"},
            {"type": "card_linked", "customer_id": "C-1", "card_number": "7001234"},
            {"type": "friend_invited", "customer_id": "C-2", "invitee_id": "C-5"},
            {"type": "excluded", "customer_id": "C-4"},
        ]
    ):
        raw = json.dumps({"event_id": f"E-{n}", "occurred_at": NOW.isoformat()} | event).encode()
        inputs.append(event_input(parse_customer_event(raw, CONFIG, NOW), raw, origin)[1])
    commands = [
        {"command_id": "CC-1", "type": "set_status", "customer_id": "C-6", "status_system": "monthly_amount",
         "status": "gold", "valid_until": "2027-01-31", "reason": "complaint", "operator": "agent-17"},
        {"command_id": "CC-2", "type": "close_period", "status_system": "monthly_amount", "period": "2026-11"},
    ]  # fmt: skip
    for command in commands:
        raw = json.dumps(command).encode()
        kind = SET_STATUS if command["type"] == "set_status" else CLOSE_PERIOD
        inputs.append(Input(kind, parse_command(raw, CONFIG, NOW), raw, origin))
    return inputs


def test_the_live_path_makes_no_reference_cycles(collector_state: None) -> None:
    """What the collector's freezing rests on: nothing the live path makes needs the cyclic
    collector to be freed, so freezing what a commit leaves alive keeps no garbage for good."""
    live = LiveStates(MemoryBacking({}))
    processor = TableProcessor(CONFIG, lambda key: 0, 1, table=live, spill_receipts=True)
    sent: list[bytes] = []
    gc.collect()
    gc.disable()
    made = 0
    for batch in (_receipts(), _others(), _receipts()[:50]):
        out = Outcome()
        if isinstance(batch[0], Record):
            routed = route_receipts(batch, "receipts", 0, CONFIG, NOW, processor, True, (OSError,))
            assert not routed.refused and not routed.failed and not routed.away
            items = routed.here
        else:
            items = batch  # type: ignore[assignment]
        poisoned: set[int] = set()
        taken = take_all(processor, 0, items, out, poisoned, (OSError,))
        assert taken.error is None and not poisoned
        snapshots: dict[str | None, Output] = {}
        send_events(out.outputs, snapshots, TOPICS, lambda topic, key, value: sent.append(value))
        sent.extend(orjson.dumps(s.value) for s in snapshots.values())
        live.store(live.snapshot(), {})
        made += len(out.outputs)
        del out, items, snapshots, taken
    assert made > 600 and len(sent) > 600
    assert any(b'"direction"' in s for s in sent)
    assert any(b'"offer_id"' in s for s in sent)
    assert any(b"erased_receipts" in s for s in sent)
    del processor, live
    assert gc.collect() == 0, "the live path made reference cycles: the collector's freezing would keep them"
