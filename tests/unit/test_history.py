"""The history replayer (models/history.py): what the agents would have made of the same inputs."""

from __future__ import annotations

import gc
import heapq
import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from models.engine import recalculated
from models.events import OutputKind
from models.history import HistoryRecord, PackedRecords, Replayer, Source, packed
from models.schema import LoyaltyConfig
from models.views import status_view
from models.whatif import Tally
from streams.envelope import partition_for
from streams.history.reading import History, replaying
from streams.history.whatif import replay_outcome
from streams.local.generator import ReceiptFactory, TrafficShape
from tests.reference import DEFAULT_PARTITIONS, reference


def replayer(config: LoyaltyConfig, **kwargs: Any) -> Replayer:
    return Replayer(config, lambda c: partition_for(c, DEFAULT_PARTITIONS), DEFAULT_PARTITIONS, **kwargs)


def record(source: Source, value: dict[str, Any], arrived: str) -> HistoryRecord:
    return HistoryRecord(source, json.dumps(value).encode(), datetime.fromisoformat(arrived).timestamp())


def sale(receipt_id: str, issued_at: str, total: str, **who: str) -> HistoryRecord:
    value = {"receipt_id": receipt_id, "type": "sale", "pos_id": "P1", "issued_at": issued_at}
    value |= {"currency": "EUR", "total": total, **who}
    return record(Source.RECEIPTS, value, issued_at)


def event(event_id: str, kind: str, customer_id: str, at: str, **extra: str) -> HistoryRecord:
    value = {"event_id": event_id, "type": kind, "customer_id": customer_id, "occurred_at": at, **extra}
    return record(Source.CUSTOMER_EVENTS, value, at)


def levels(r: Replayer, system: str = "monthly_amount") -> dict[str, str]:
    return {c: s.systems[system].level for c, s in r.states.items() if system in s.systems}


def test_receipts_make_exactly_the_events_the_reference_expects(config: LoyaltyConfig) -> None:
    # Three months of generated traffic with retries and returns, so frontiers move,
    # walks close customers who stopped buying, and resends repeat their events.
    factory = ReceiptFactory(TrafficShape(customers=300, seed=11))
    start = datetime(2026, 9, 1, tzinfo=UTC)
    values = [factory.next(start + timedelta(minutes=30 * n)) for n in range(4000)]
    r = replayer(config, campaigns=False)
    made: dict[str, dict[str, Any]] = {}
    for value in values:
        arrived = datetime.fromisoformat(value["issued_at"]) + timedelta(seconds=1)
        for output in r.feed(record(Source.RECEIPTS, value, arrived.isoformat())):
            made[output.value["event_id"]] = output.value
    expected = reference(config, values, datetime(2026, 12, 31, tzinfo=UTC))
    # Every event, and no snapshot (a replay needs only the final states, which equal the reference's).
    assert made == {i: e for i, e in expected.events.items() if "statuses" not in e}
    final = {c: status_view(s, config, caused_by="", occurred_at="").value["statuses"] for c, s in r.states.items()}
    assert final == expected.final
    assert r.refused == len(expected.refused)
    assert sum(1 for v in made.values() if v.get("reason") == "period_close") > 100


def test_a_card_resolves_to_its_owner_and_a_link_merges_the_counters(config: LoyaltyConfig) -> None:
    r = replayer(config, campaigns=False)
    for item in (
        event("E1", "card_issued", "TMP-1", "2026-10-01T09:00:00+02:00", card_number="7001"),
        sale("R1", "2026-10-02T12:00:00+02:00", "60.00", card_number="7001"),  # the temporary owner's
        event("E2", "registered", "M-1", "2026-10-03T09:00:00+02:00"),
        sale("R2", "2026-10-04T12:00:00+02:00", "50.00", customer_id="M-1"),
        event("E3", "card_linked", "M-1", "2026-10-05T09:00:00+02:00", card_number="7001"),
        sale("R3", "2026-10-06T12:00:00+02:00", "1.00", card_number="7001"),  # now the member's
        sale("R4", "2026-11-02T12:00:00+01:00", "1.00", customer_id="M-1"),  # closes October
    ):
        r.feed(item)
    member = r.states["M-1"].systems["monthly_amount"]
    # 60 + 50 + 1 = 111 in October: Silver for November, which R4 opened.
    assert (member.closed_period, member.closed_amount, member.level) == ("2026-10", 111, "silver")
    assert r.states["TMP-1"].merged_into == "M-1"
    assert r.cards["7001"].owner == "M-1"


def test_a_birthday_bonus_is_granted_once_on_the_day_the_history_reaches(config: LoyaltyConfig) -> None:
    r = replayer(config)
    granted = []
    for item in (
        event("E1", "registered", "M-2", "2025-01-10T09:00:00+01:00", birth_date="1990-10-15"),
        sale("R1", "2026-10-14T12:00:00+02:00", "10.00", customer_id="M-2"),
        sale("R1", "2026-10-14T12:00:00+02:00", "10.00", customer_id="M-2"),  # a resend
        sale("R2", "2026-10-20T12:00:00+02:00", "10.00", customer_id="M-2"),
    ):
        granted += [o.value for o in r.feed(item) if o.kind is OutputKind.OFFER_TRIGGER]
    granted += [o.value for o in r.finish(datetime(2026, 10, 25, tzinfo=UTC)) if o.kind is OutputKind.OFFER_TRIGGER]
    birthdays = [g for g in granted if g["offer_id"] == "birthday_bonus"]
    assert [(g["customer_id"], g["occurred_at"][:10], g["points"]) for g in birthdays] == [("M-2", "2026-10-15", 500)]


def test_a_bad_input_is_counted_as_refused_and_the_rest_goes_on(config: LoyaltyConfig) -> None:
    r = replayer(config, campaigns=False)
    r.feed(HistoryRecord(Source.RECEIPTS, b"not json", 0.0))
    r.feed(sale("R1", "2026-10-02T12:00:00+02:00", "-5.00", customer_id="M-3"))
    r.feed(sale("R2", "2026-10-02T12:00:00+02:00", "150.00", customer_id="M-3"))
    assert (r.refused, r.inputs) == (2, 3)
    assert levels(r) == {"M-3": "gold"}  # the instant upgrade of a purchase above 100


def test_finish_closes_every_period_that_ended_a_grace_before(config: LoyaltyConfig) -> None:
    r = replayer(config, campaigns=False)
    r.feed(sale("R1", "2026-10-02T12:00:00+02:00", "120.00", customer_id="M-4"))
    r.feed(sale("R2", "2026-10-03T12:00:00+02:00", "10.00", customer_id="M-5"))
    r.finish(datetime.fromisoformat("2026-11-01T00:59:00+01:00"))  # October ended, the grace has not
    assert {c: s.systems["monthly_amount"].period for c, s in r.states.items()} == {"M-4": "2026-10", "M-5": "2026-10"}
    r.finish(datetime.fromisoformat("2026-11-01T01:00:00+01:00"))
    assert levels(r) == {"M-4": "silver", "M-5": "bronze"}
    assert {s.systems["monthly_amount"].period for s in r.states.values()} == {"2026-11"}


def test_a_recalculation_announces_each_changed_level_and_outnumbers_the_old_snapshot(config: LoyaltyConfig) -> None:
    r = replayer(config, campaigns=False)
    r.feed(sale("R1", "2026-10-02T12:00:00+02:00", "150.00", customer_id="M-6"))  # gold at once (instant rule)
    state = r.states["M-6"]
    at = datetime(2026, 12, 1, tzinfo=UTC)
    old = {"monthly_amount": "silver", "monthly_count": "basic"}
    result = recalculated(state, 41, old, "recalculation:v2", at, config)
    changes = [o.value for o in result.outputs if o.kind is OutputKind.STATUS_CHANGE]
    assert [(c["status_system"], c["previous"], c["current"], c["direction"], c["reason"]) for c in changes] == [
        ("monthly_amount", "silver", "gold", "upgrade", "recalculation")
    ]
    (snapshot,) = [o.value for o in result.outputs if o.kind is OutputKind.CUSTOMER_STATUS]
    assert (snapshot["version"], snapshot["caused_by"]) == (42, "recalculation:v2")
    # A level the new rules no longer have is replaced, not compared.
    gone = recalculated(state, 0, {"monthly_amount": "platinum"}, "recalculation:v3", at, config).outputs
    assert [o.value["direction"] for o in gone if o.kind is OutputKind.STATUS_CHANGE] == ["assign"]


def test_the_window_limits_receipts_but_keeps_every_earlier_customer_event() -> None:
    from streams.history.reading import within

    start, end = (
        datetime.fromisoformat("2026-10-01T00:00:00+02:00"),
        datetime.fromisoformat("2026-11-01T00:00:00+01:00"),
    )
    records = [
        event("E0", "registered", "M-7", "2025-03-01T09:00:00+01:00"),  # long before: still needed
        sale("R0", "2026-09-30T23:59:00+02:00", "5.00", customer_id="M-7"),  # before the window
        sale("R1", "2026-10-01T00:00:00+02:00", "5.00", customer_id="M-7"),  # its first instant
        sale("R2", "2026-10-31T23:59:59+01:00", "5.00", customer_id="M-7"),
        sale("R3", "2026-11-01T00:00:00+01:00", "5.00", customer_id="M-7"),  # the end is exclusive
        event("E1", "profile_updated", "M-7", "2026-11-02T09:00:00+01:00"),  # after the end
        HistoryRecord(Source.RECEIPTS, b"not json", 0.0),  # kept, for the replayer to refuse and count
        # A number beyond a double is not an input the pipeline reads: kept for the replayer to refuse.
        HistoryRecord(
            Source.RECEIPTS, b'{"issued_at": "2026-11-05T10:00:00+01:00", "total": 1' + b"0" * 400 + b"}", 0.0
        ),
        sale("R4", "2026-12-05T10:00:00+01:00", "5.00", customer_id="M-7"),  # read: out of the window
    ]
    assert list(within(records, start, end)) == [records[0], records[2], records[3], records[-3], records[-2]]
    assert list(within(records, None, None)) == records  # no window: everything, nothing read


def test_the_tally_counts_each_event_once_without_making_it_as_its_made_values_would(config: LoyaltyConfig) -> None:
    # Offers and status changes are counted from what they carry, not their values; the
    # figures must be those the values give, each event id once, though every event is
    # handed over twice.
    factory = ReceiptFactory(TrafficShape(customers=50, seed=4))
    start = datetime(2026, 10, 1, tzinfo=UTC)
    r, tally = replayer(config, campaigns=False), Tally()
    offers: dict[str, dict[str, Any]] = {}
    changes: dict[str, dict[str, Any]] = {}
    for n in range(600):
        value = factory.next(start + timedelta(hours=n))
        outputs = r.feed(record(Source.RECEIPTS, value, value["issued_at"]))
        tally.add(outputs)
        tally.add(outputs)
        offers |= {o.value["event_id"]: o.value for o in outputs if o.kind is OutputKind.OFFER_TRIGGER}
        changes |= {o.value["event_id"]: o.value for o in outputs if o.kind is OutputKind.STATUS_CHANGE}
    counted, points = tally.result.offers, tally.result.points
    assert sum(counted.values()) == len(offers) > 600
    assert counted == Counter(v["offer_id"] for v in offers.values())
    expected_points: Counter[str] = Counter()
    for v in offers.values():
        expected_points[v["offer_id"]] += v.get("points") or 0
    assert points == expected_points
    assert points["fifth_purchase_bonus"] > 0
    assert tally.result.changes == Counter(
        f"{v['status_system']} {v['direction']} {v['reason']}" for v in changes.values()
    )
    assert tally.result.changes["monthly_amount upgrade instant_rule"] > 0


def _returns_history() -> list[dict[str, Any]]:
    """Issue 34's cases, one customer each: a return of last month's receipt before this month's
    sale (RF) and after it (SF); two purchases above the instant rule, one returned (TWO); the only
    one returned (ONE)."""

    def receipt(customer: str, receipt_id: str, at: str, total: str, original: str | None = None) -> dict[str, Any]:
        value = {"receipt_id": receipt_id, "type": "sale" if original is None else "return", "pos_id": "P1"}
        value |= {"customer_id": customer, "issued_at": at, "currency": "EUR", "total": total}
        return value | ({"original_receipt_id": original} if original else {})

    values = []
    for customer, return_first in (("C-RF", True), ("C-SF", False)):
        first, then = "2026-11-01T10:00:00+01:00", "2026-11-01T11:00:00+01:00"
        values += [
            receipt(customer, f"{customer}-OCT-198", "2026-10-20T10:00:00+02:00", "198.00"),
            receipt(customer, f"{customer}-OCT-52", "2026-10-30T10:00:00+01:00", "52.00"),
            receipt(customer, f"{customer}-RET", first if return_first else then, "52.00", f"{customer}-OCT-52"),
            receipt(customer, f"{customer}-NOV-60", then if return_first else first, "60.00"),
        ]
    for customer, second in (("C-TWO", "150.00"), ("C-ONE", "40.00")):
        values += [
            receipt(customer, f"{customer}-BIG", "2026-11-03T12:00:00+01:00", "150.00"),
            receipt(customer, f"{customer}-2ND", "2026-11-04T12:00:00+01:00", second),
            receipt(customer, f"{customer}-RET", "2026-11-05T12:00:00+01:00", "150.00", f"{customer}-BIG"),
        ]
    return sorted(values, key=lambda v: datetime.fromisoformat(v["issued_at"]))


def test_a_replay_and_the_what_if_count_returns_as_the_live_path_does(config: LoyaltyConfig) -> None:
    values = _returns_history()
    r = replayer(config, campaigns=False)
    made: dict[str, dict[str, Any]] = {}
    for value in values:
        arrived = datetime.fromisoformat(value["issued_at"]) + timedelta(seconds=1)
        for output in r.feed(record(Source.RECEIPTS, value, arrived.isoformat())):
            made[output.value["event_id"]] = output.value
    expected = reference(config, values, datetime(2026, 12, 31, tzinfo=UTC))
    assert made == {i: e for i, e in expected.events.items() if "statuses" not in e}
    final = {c: status_view(s, config, caused_by="", occurred_at="").value["statuses"] for c, s in r.states.items()}
    assert final == expected.final
    assert r.refused == 0
    amount = {c: s.systems["monthly_amount"] for c, s in r.states.items()}
    assert {c: (a.amount, a.count, a.level) for c, a in amount.items()} == {
        "C-RF": (Decimal("8.00"), 0, "gold"),  # whichever came first, the return is not lost
        "C-SF": (Decimal("8.00"), 0, "gold"),
        "C-TWO": (Decimal("150.00"), 1, "gold"),  # the other purchase above 100 still earns it
        "C-ONE": (Decimal("40.00"), 1, "bronze"),
    }
    revoked = [(e["customer_id"], e["current"]) for e in made.values() if e.get("reason") == "return_revoked"]
    assert revoked == [("C-ONE", "bronze")]
    # The what-if, through November's close: the same deciding counters and levels in both orders.
    records = [record(Source.RECEIPTS, v, v["issued_at"]) for v in values]
    outcome = replay_outcome(config, records, lambda c: partition_for(c, DEFAULT_PARTITIONS), DEFAULT_PARTITIONS,
                             datetime.fromisoformat("2026-12-01T00:00:00+01:00"))  # fmt: skip
    assert outcome.deciding["monthly_amount"] == {"C-RF": "8.00", "C-SF": "8.00", "C-TWO": "150.00", "C-ONE": "40.00"}
    assert outcome.levels["monthly_amount"] == {
        "C-RF": "bronze",
        "C-SF": "bronze",
        "C-TWO": "silver",
        "C-ONE": "bronze",
    }
    assert outcome.deciding["monthly_count"] == {"C-RF": "0", "C-SF": "0", "C-TWO": "1", "C-ONE": "1"}
    assert outcome.changes["monthly_amount downgrade return_revoked"] == 1


def test_what_a_replay_made_joins_the_oldest_generation_and_the_collector_comes_back() -> None:
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        with replaying():
            assert not gc.isenabled()
            made = [[n] for n in range(1000)]  # tracked by the collector, as rebuilt states are
        assert gc.isenabled()
        oldest = {id(o) for o in gc.get_objects(generation=2)}
        assert all(id(item) in oldest for item in made)  # no collection will walk them young
        young = gc.get_objects(generation=0)
        assert not any(item is made[0] for item in young)
    finally:
        if not was_enabled:
            gc.disable()


def test_packed_records_give_back_each_record_as_it_was() -> None:
    records = [
        sale("R1", "2026-11-02T10:00:00+01:00", "5.00", customer_id="C1"),
        event("E1", "registered", "C1", "2026-11-02T10:00:01+01:00"),
        HistoryRecord(Source.STATUS_COMMANDS, b"", 3.25),  # an empty value: a zero-length slice
        HistoryRecord(Source.RECEIPTS, b"not json", 0.0),
        event("E2", "card_issued", "C2", "2026-11-03T10:00:00+01:00", card_number="9"),
    ]
    history = PackedRecords(records)
    assert len(history) == 5
    assert list(history) == records
    assert [history[n] for n in range(-5, 0)] == records
    assert history[1:4] == records[1:4]
    assert [history.value(n) for n in range(5)] == [r.value for r in records]
    assert [history.source(n) for n in range(5)] == [r.source for r in records]
    assert list(history.indices(Source.CUSTOMER_EVENTS)) == [1, 4]
    assert list(history.indices(Source.RECEIPTS)) == [0, 3]
    assert packed(history) is history
    assert list(packed(iter(records))) == records  # from a generator too
    assert list(PackedRecords()) == []
    with pytest.raises(IndexError):
        history[5]


def test_a_history_shows_itself_in_a_line_however_much_it_holds() -> None:
    """asyncio.run on Python 3.11 reprs its result twice as it ends (CPython issue 112559), and
    `loyalty what-if` reads the history so: its records must not be written out."""
    record = HistoryRecord(Source.RECEIPTS, b'{"receipt_id": "R1"}', 0.0)
    shown = repr(History([record] * 100_000, {}))
    assert shown == "History(100,000 records, up to the ends of 0 partitions)"


@pytest.mark.parametrize("clock_goes_back", [False, True])
def test_partitions_merge_into_one_arrival_order_as_a_heap_merges_them(clock_goes_back: bool) -> None:
    """By timestamp across partitions, a tie to the earlier partition, each partition's own order
    kept: what heapq.merge of the records makes, packed, whether or not a partition's clock went back."""
    rng = random.Random(5)
    parts: list[tuple[Source, list[bytes], list[float]]] = []
    for k, source in enumerate([Source.RECEIPTS, Source.RECEIPTS, Source.CUSTOMER_EVENTS, Source.STATUS_COMMANDS]):
        stamps = sorted(float(rng.randrange(200)) for _ in range(rng.randrange(1, 300)))  # many ties
        if clock_goes_back and k == 1:
            stamps[len(stamps) // 2 :] = [s - 150 for s in stamps[len(stamps) // 2 :]]
        parts.append((source, [f"{k}-{n}".encode() * rng.randrange(1, 4) for n in range(len(stamps))], stamps))
    parts.append((Source.RECEIPTS, [], []))  # a partition with nothing to read
    expected = list(
        heapq.merge(
            *[[HistoryRecord(source, v, t) for v, t in zip(vs, ts, strict=True)] for source, vs, ts in parts],
            key=lambda record: record.timestamp,
        )
    )
    merged = PackedRecords.merged(parts)
    assert list(merged) == expected
    assert [merged.value(n) for n in range(len(merged))] == [r.value for r in expected]
    assert (sorted(r.timestamp for r in expected) == [r.timestamp for r in expected]) is not clock_goes_back
