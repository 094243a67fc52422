"""`loyalty load-statuses`: rows validated as the worker validates commands, bad ones reported by line."""

from __future__ import annotations

import json
from datetime import datetime

from streams.batch import Accepted, Rejected, read_rows
from tests.unit.test_engine import CONFIG

NOW = datetime.fromisoformat("2026-11-22T12:00:00+00:00")

FILE = b"""customer_id,status_system,status,valid_until,reason
C-1,monthly_amount,gold,2026-12-31,campaign winners
C-2,monthly_amount,platinum
C-3,monthly_count,pro

,monthly_amount,gold
C-5,monthly_amount,silver,31/12/2026
C-6,yearly,gold
C-7,monthly_amount,silver,,,surplus
"""


def test_good_rows_become_commands_and_bad_rows_are_reported_by_line():
    rows = list(read_rows(FILE, CONFIG, NOW, operator="ops"))
    accepted = [r for r in rows if isinstance(r, Accepted)]
    rejected = {r.line: r.reason for r in rows if isinstance(r, Rejected)}
    assert [(r.line, r.customer_id) for r in accepted] == [(2, "C-1"), (4, "C-3")]
    assert set(rejected) == {3, 6, 7, 8, 9}
    assert "'platinum' is not a level of 'monthly_amount'" in rejected[3]
    assert rejected[6] == "customer_id: required"
    assert "valid_until" in rejected[7]
    assert "unknown status system 'yearly'" in rejected[8]
    assert "6 columns" in rejected[9]
    command = json.loads(accepted[0].command)
    assert command | {"command_id": "?"} == {
        "command_id": "?",
        "type": "set_status",
        "source": "batch",
        "operator": "ops",
        "requested_at": NOW.isoformat(),
        "customer_id": "C-1",
        "status_system": "monthly_amount",
        "status": "gold",
        "valid_until": "2026-12-31",
        "reason": "campaign winners",
    }


def test_the_same_file_gives_the_same_command_ids_and_another_file_others():
    ids = [json.loads(r.command)["command_id"] for r in read_rows(FILE, CONFIG, NOW, "ops") if isinstance(r, Accepted)]
    again = [
        json.loads(r.command)["command_id"] for r in read_rows(FILE, CONFIG, NOW, "ops") if isinstance(r, Accepted)
    ]
    other = [
        json.loads(r.command)["command_id"]
        for r in read_rows(FILE + b"C-9,monthly_count,pro\n", CONFIG, NOW, "ops")
        if isinstance(r, Accepted)
    ]
    assert ids == again and len(set(ids)) == 2
    assert not set(ids) & set(other)


def test_without_a_header_the_contract_order_applies_and_a_bad_header_stops_early():
    (row,) = read_rows(b"C-1,monthly_count,pro\n", CONFIG, NOW, "ops")
    assert isinstance(row, Accepted)
    (row,) = read_rows(b"customer_id,level\nC-1,gold\n", CONFIG, NOW, "ops")
    assert isinstance(row, Rejected) and row.line == 1 and "unknown columns ['level']" in row.reason


def test_columns_may_come_in_any_order_after_a_header():
    (row,) = read_rows(b"status,customer_id,status_system\ngold,C-1,monthly_amount\n", CONFIG, NOW, "ops")
    assert isinstance(row, Accepted) and row.customer_id == "C-1"


def test_a_file_that_is_not_text_is_one_clear_rejection():
    (row,) = read_rows(b"\xff\xfe\x00C", CONFIG, NOW, "ops")
    assert isinstance(row, Rejected) and "not UTF-8" in row.reason
