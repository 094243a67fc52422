"""The close frontier: when a period is over for everyone on a partition, and what closing it emits."""

from __future__ import annotations

from datetime import datetime

import pytest

from config.loading import DEFAULT_CONFIG, parse_config
from models.engine import apply_receipt, close_due, is_due
from models.errors import InvalidInput
from models.events import OutputKind
from models.frontier import CloseFrontier, advanced, frontier_at, next_threshold
from models.inputs import parse_receipt
from models.state import CustomerState
from tests.unit.test_engine import CONFIG, changes, feed, sale, sales_in

WEEKLY = parse_config(DEFAULT_CONFIG.read_text(encoding="utf-8").replace("period: month", "period: week"))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_period_is_over_for_everyone_only_once_the_grace_after_its_end_has_passed():
    # period_close_grace is 1h in the shipped config; Berlin is UTC+1 in November.
    assert frontier_at(at("2026-12-01T00:59:59+01:00"), CONFIG) == {
        "monthly_amount": "2026-11",
        "monthly_count": "2026-11",
    }
    assert frontier_at(at("2026-12-01T01:00:00+01:00"), CONFIG) == {
        "monthly_amount": "2026-12",
        "monthly_count": "2026-12",
    }


def test_the_threshold_is_the_local_period_end_plus_the_grace_across_a_dst_change():
    # Berlin moves to summer time on 28 March 2027: March ends at midnight +02:00.
    frontier = CloseFrontier({"monthly_amount": "2027-03", "monthly_count": "2027-03"}, "R-1")
    assert next_threshold(frontier, CONFIG) == at("2027-04-01T01:00:00+02:00").timestamp()


def test_the_first_receipt_sets_the_frontier_and_later_ones_move_it_only_past_the_threshold():
    first = advanced(None, at("2026-11-05T10:00:00+01:00"), "R-1", CONFIG)
    assert first == CloseFrontier({"monthly_amount": "2026-11", "monthly_count": "2026-11"}, "R-1", walked=False)
    done = CloseFrontier(first.periods, first.cause, walked=True)
    assert advanced(done, at("2026-12-01T00:30:00+01:00"), "R-2", CONFIG) is None  # within the grace
    moved = advanced(done, at("2026-12-01T01:30:00+01:00"), "R-3", CONFIG)
    assert moved == CloseFrontier({"monthly_amount": "2026-12", "monthly_count": "2026-12"}, "R-3", walked=False)
    assert CloseFrontier.from_bytes(moved.to_bytes()) == moved


def test_a_customer_who_bought_nothing_is_closed_with_the_frontier_as_the_cause():
    state, _ = feed(None, sales_in("2026-10", ["75.00", "75.00"]))  # 150.00: Silver for November
    version = state.version
    frontier = {"monthly_amount": "2026-12", "monthly_count": "2026-12"}
    assert is_due(state, frontier)
    result = close_due(state, frontier, "OTHER-7", CONFIG)
    amount = changes(result, "monthly_amount")
    # October earned Silver, then November (nothing bought) earned Bronze again.
    assert [(c["previous"], c["current"], c["period"], c["caused_by"]) for c in amount] == [
        ("bronze", "silver", "2026-10", "OTHER-7"),
        ("silver", "bronze", "2026-11", "OTHER-7"),
    ]
    snapshots = [o for o in result.outputs if o.kind is OutputKind.CUSTOMER_STATUS]
    assert len(snapshots) == 1 and state.version == version + 1
    assert snapshots[0].value["caused_by"] == "OTHER-7"
    assert not is_due(state, frontier)
    assert close_due(state, frontier, "OTHER-8", CONFIG).outputs == []


def test_the_next_receipt_announces_a_change_the_frontier_made():
    state, _ = feed(None, sales_in("2026-10", ["90.00", "90.00"]))  # 180.00: Silver for November
    close_due(state, {"monthly_amount": "2026-11", "monthly_count": "2026-11"}, "OTHER-1", CONFIG)
    first = apply_receipt(state, sale("NOV-1", "2026-11-03T10:00:00+01:00", "5.00"), CONFIG)
    lines = next(o for o in first.outputs if o.kind is OutputKind.RECEIPT_MESSAGE).value["lines"]
    assert "Congratulations! You are now Silver." in lines
    second = apply_receipt(state, sale("NOV-2", "2026-11-04T10:00:00+01:00", "5.00"), CONFIG)
    lines = next(o for o in second.outputs if o.kind is OutputKind.RECEIPT_MESSAGE).value["lines"]
    assert not any("Congratulations" in line for line in lines)
    assert CustomerState.from_bytes(state.to_bytes()).news == []


def test_a_receipt_for_a_period_the_frontier_closed_is_late():
    state, _ = feed(None, sales_in("2026-10", ["90.00"]))
    close_due(state, {"monthly_amount": "2026-11", "monthly_count": "2026-11"}, "OTHER-1", CONFIG)
    late = apply_receipt(state, sale("OCT-LATE", "2026-10-30T10:00:00+01:00", "20.00"), CONFIG)
    assert late.late
    assert [(c["current"], c["reason"]) for c in changes(late, "monthly_amount")] == [("silver", "late_receipt")]


def test_week_ids_across_a_year_end_compare_as_weeks():
    state, _ = feed(None, [sale("W-1", "2026-12-30T10:00:00+01:00", "10.00")], WEEKLY)
    assert state.systems["monthly_amount"].period == "2026-W53"
    assert is_due(state, {"monthly_amount": "2027-W01", "monthly_count": "2027-W01"})
    assert not is_due(state, {"monthly_amount": "2026-W53", "monthly_count": "2026-W53"})


def test_no_customer_id_may_take_the_frontier_s_key():
    raw = (
        '{"receipt_id": "R-1", "type": "sale", "customer_id": "partition:0", "pos_id": "P", "store_id": "S",'
        ' "issued_at": "2026-11-05T10:00:00+01:00", "currency": "EUR", "total": "1.00"}'
    )
    with pytest.raises(InvalidInput, match="partition:"):
        parse_receipt(raw, CONFIG, at("2026-11-22T12:00:00+00:00"))
