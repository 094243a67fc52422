"""The receipt store: receipts a customer's state lets go of within the de-duplication window stay
known, whatever the customer's volume, so none is refused as forgotten and a resend is a resend."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from config.loading import load_config
from models.events import ERASED_RECEIPTS, OutputKind
from models.inputs import customer_of_receipt_key, parse_customer_event, parse_receipt, receipt_key
from models.processor import Outcome, TableProcessor, event_input, receipt_input
from streams.envelope import partition_for
from streams.live import LiveStates
from streams.store import MemoryBacking

CONFIG = load_config()
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
START = datetime(2026, 11, 1, 9, tzinfo=UTC)


def receipt(receipt_id: str, at: datetime, total: str = "1.00", **extra: str) -> bytes:
    value = {
        "receipt_id": receipt_id,
        "type": "sale",
        "customer_id": "C-1",
        "pos_id": "POS7",
        "store_id": "S1",
        "issued_at": at.isoformat(),
        "currency": "EUR",
        "total": total,
        **extra,
    }
    return json.dumps(value).encode()


def take(processor: TableProcessor, raw: bytes, now: datetime = NOW) -> Outcome:
    out = Outcome()
    _, item = receipt_input(parse_receipt(raw, CONFIG, now), raw, None)
    processor.take(item, partition_for("C-1", 4), out)
    return out


def counted(out: Outcome) -> dict[str, int]:
    return {labels[2]: count for labels, count in out.tally.items() if labels[0] == "receipts"}


def test_a_receipt_dated_before_2000_others_counts_once_and_its_resend_is_a_resend() -> None:
    data: dict[bytes, bytes] = {}
    live = LiveStates(MemoryBacking(data))
    processor = TableProcessor(CONFIG, lambda key: partition_for(key, 4), 4, table=live, spill_receipts=True)
    for n in range(2000):
        take(processor, receipt(f"R-{n}", START + timedelta(minutes=10 * n)))
    state = processor.customer("C-1")
    assert state is not None
    assert len(state.receipts) == CONFIG.receipt_memory  # the rest are in the receipt store
    assert state.forgotten_before == 0
    late = receipt("EARLY-1", START - timedelta(hours=1), total="7.00")
    assert counted(take(processor, late)) == {"counted": 1}
    assert counted(take(processor, late)) == {"duplicate": 1}
    # An old one the state let go of is a resend too, and can be returned.
    assert counted(take(processor, receipt("R-5", START + timedelta(minutes=50)))) == {"duplicate": 1}
    refund = receipt("RET-1", START + timedelta(days=14), type="return", original_receipt_id="R-5")
    assert counted(take(processor, refund)) == {"counted": 1}
    again = receipt("RET-2", START + timedelta(days=14), type="return", original_receipt_id="R-5")
    assert take(processor, again).refused  # nothing of R-5 left to return
    state = processor.customer("C-1")
    assert state is not None
    # Every sale once (2,000 of 1.00 and the early 7.00, dated before the customer's first
    # period, which counts in it), one of 1.00 returned.
    assert state.systems["monthly_amount"].amount == 2000 + 7 - 1
    live.store(live.snapshot(), {})
    spilled = {key for key in data if key.startswith(b"rid:")}
    assert all(customer_of_receipt_key(key) == b"C-1" for key in spilled)
    every = {f"R-{n}" for n in range(2000)} | {"EARLY-1", "RET-1"}
    in_store = {key.decode().removeprefix("rid:3:C-1") for key in spilled}
    assert in_store | state.receipts.keys() == every
    # R-5, returned, is in the state again; its copy in the store is overwritten when it is let go again.
    assert in_store & state.receipts.keys() == {"R-5"}


def test_a_receipt_key_names_its_customer_whatever_the_ids_hold() -> None:
    key = receipt_key("C:1\x00é", "R:2").encode()
    assert customer_of_receipt_key(key) == "C:1\x00é".encode()


def test_an_exclusion_erases_the_receipt_store_s_ids_too() -> None:
    data: dict[bytes, bytes] = {}
    live = LiveStates(MemoryBacking(data))
    processor = TableProcessor(CONFIG, lambda key: partition_for(key, 4), 4, table=live, spill_receipts=True)
    for n in range(500):
        take(processor, receipt(f"R-{n}", START + timedelta(minutes=10 * n)))
    live.store(live.snapshot(), {})
    raw = json.dumps(
        {"event_id": "X-1", "type": "excluded", "customer_id": "C-1", "occurred_at": "2026-11-20T10:00:00+01:00"}
    ).encode()
    out = Outcome()
    _, item = event_input(parse_customer_event(raw, CONFIG, NOW), raw, None)
    processor.take(item, partition_for("C-1", 4), out)
    live.store(live.snapshot(), {})
    assert not [key for key in data if key.startswith(b"rid:")]
    snapshot = next(o for o in out.outputs if o.kind is OutputKind.CUSTOMER_STATUS)
    assert sorted(snapshot.value[ERASED_RECEIPTS]) == sorted(f"R-{n}" for n in range(500))


def test_a_close_walk_drops_stored_receipts_that_left_the_window_and_keeps_the_others() -> None:
    data: dict[bytes, bytes] = {}
    live = LiveStates(MemoryBacking(data))
    processor = TableProcessor(CONFIG, lambda key: partition_for(key, 4), 4, table=live, spill_receipts=True)
    for n in range(1000):  # 1 to about 8 November: 600 of them in the receipt store
        take(processor, receipt(f"R-{n}", START + timedelta(minutes=10 * n)))
    # Over two months on, the November receipts are behind the window; the January ones are not.
    later = START + CONFIG.dedupe_window + timedelta(days=10)
    for n in range(500):
        take(processor, receipt(f"L-{n}", later + timedelta(minutes=n)), now=later + timedelta(days=1))
    live.store(live.snapshot(), {})
    stored = {key for key in data if key.startswith(b"rid:")}
    assert any(b"R-" in key for key in stored) and any(b"L-" in key for key in stored)

    partition = partition_for("C-1", 4)
    out = Outcome()
    processor.tick(partition, later + timedelta(days=40), out)  # January closes: a walk over every customer
    processor.walk(partition, None, out)
    live.store(live.snapshot(), {})
    left = {key for key in data if key.startswith(b"rid:")}
    assert left == {key for key in stored if b"L-" in key}
    state = processor.customer("C-1")
    assert state is not None
    assert counted(take(processor, receipt("L-3", later + timedelta(minutes=3)), now=later)) == {"duplicate": 1}
