"""The customer lifecycle through the public topics, with both sinks and the status API."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession

from streams.local.probe import OutputReader, produce
from streams.local.service import free_port
from tests.conftest import PipelineUnderTest
from tests.integration.test_pipeline import answered, receipt, records, send
from tests.integration.test_serving import Served, eventually, get_json

pytestmark = pytest.mark.integration


def customer_event(event_id: str, kind: str, customer: str, at: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "type": kind, "customer_id": customer, "occurred_at": at, **extra}


async def send_events(pipeline: PipelineUnderTest, events: list[dict[str, Any] | bytes]) -> None:
    await produce(
        pipeline.bootstrap,
        pipeline.topic("customer-events"),
        [(b"k", e if isinstance(e, bytes) else json.dumps(e).encode()) for e in events],
    )


async def test_registration_then_exclusion_erases_the_customer_everywhere(
    served: Served, pipeline: PipelineUnderTest, outputs: OutputReader, http: ClientSession
) -> None:
    served.start()
    await outputs.start()
    await send_events(
        pipeline,
        [
            customer_event("E-1", "registered", "C-50", "2026-11-01T10:00:00+01:00", birth_date="1990-11-25"),
            b"{not json",
            customer_event("E-2", "anonymous_registered", "C-50", "2026-11-01T11:00:00+01:00"),  # forbidden
        ],
    )
    await send(pipeline, [receipt("L-1", "C-50", "2026-11-03T12:00:00+01:00", "60.00")])
    await answered(outputs, ["L-1"])
    await outputs.wait_for(lambda: len(records(outputs, pipeline, "dead-letters")) == 2, what="two dead letters")
    errors = sorted(d["error"] for d in records(outputs, pipeline, "dead-letters"))
    assert errors[0].startswith("not JSON")
    assert "anonymous_registered is not allowed for a customer who is registered" in errors[1]

    url = f"{served.base}/customers/C-50/status"

    async def counted() -> Any:
        code, body = await get_json(http, url)
        return body if code == 200 and body["statuses"][0]["counter"] == "60.00" else None

    body = await eventually(counted, what="C-50 in the status API")
    assert body["client_state"] == "registered"
    redis = aioredis.from_url(served.redis_url)
    database = await asyncpg.connect(served.database_url)
    try:
        await eventually(lambda: redis.get(f"{served.prefix}receipt-message:L-1"), what="L-1's message in Redis")

        async def birth_date_stored() -> Any:
            return await database.fetchval("SELECT birth_date FROM customers WHERE customer_id = 'C-50'")

        assert str(await eventually(birth_date_stored, what="the profile in PostgreSQL")) == "1990-11-25"

        await send_events(pipeline, [customer_event("X-1", "excluded", "C-50", "2026-11-04T10:00:00+01:00")])

        async def gone() -> bool:
            code, _ = await get_json(http, url)
            return code == 404

        await eventually(gone, what="the status API to answer 404")

        async def erased_in_postgres() -> bool:
            row = await database.fetchrow("SELECT * FROM customers WHERE customer_id = 'C-50'")
            return row is not None and row["client_state"] == "excluded"

        await eventually(erased_in_postgres, what="the exclusion in PostgreSQL")
        # A search for the customer's personal data and receipts finds nothing.
        row = await database.fetchrow("SELECT * FROM customers WHERE customer_id = 'C-50'")
        assert row["birth_date"] is None and row["registered_at"] is None and json.loads(row["statuses"]) == []
        assert await database.fetchval("SELECT count(*) FROM receipt_messages WHERE customer_id = 'C-50'") == 0
        assert await database.fetchval("SELECT count(*) FROM receipt_messages WHERE receipt_id = 'L-1'") == 0
        for table in ("status_changes", "offer_triggers"):
            leaks = await database.fetchval(
                f"SELECT count(*) FROM {table} WHERE row_to_json({table})::text LIKE '%L-1%'"
            )
            assert leaks == 0, f"{table} still names the receipt"
        assert await database.fetchval("SELECT count(*) FROM customer_statuses WHERE customer_id = 'C-50'") == 0
        assert await redis.get(f"{served.prefix}receipt-message:L-1") is None
        fields = await redis.hgetall(f"{served.prefix}customer:C-50")
        assert set(fields) <= {b"client_state", b"version", b"updated_at", b"statuses"}
        assert fields[b"client_state"] == b"excluded" and fields[b"statuses"] == b"[]"
    finally:
        await redis.aclose()
        await database.close()

    # Later purchases are anonymous: a message, no counting, no offers.
    await send(pipeline, [receipt("L-2", "C-50", "2026-11-05T12:00:00+01:00", "150.00")])
    await answered(outputs, ["L-2"])
    (message,) = [m for m in records(outputs, pipeline, "receipt-messages") if m["receipt_id"] == "L-2"]
    assert message["customer_id"] is None
    assert not [c for c in records(outputs, pipeline, "status-changes") if c["caused_by"] == "L-2"]
    (snapshot,) = [s for s in records(outputs, pipeline, "customer-status") if s["caused_by"] == "X-1"]
    assert "birth_date" not in snapshot and snapshot["erased_receipts"] == ["L-1"]


async def test_load_statuses_publishes_good_rows_and_reports_bad_ones(
    pipeline: PipelineUnderTest, outputs: OutputReader, tmp_path: Path
) -> None:
    pipeline.start_worker()
    await outputs.start()
    await send(pipeline, [receipt("B-1", "C-60", "2026-11-03T12:00:00+01:00", "10.00")])
    await answered(outputs, ["B-1"])
    csv_file = tmp_path / "statuses.csv"
    csv_file.write_text(
        "customer_id,status_system,status,valid_until,reason\n"
        "C-60,monthly_amount,gold,2099-12-31,won the raffle\n"
        "C-61,monthly_amount,diamond\n"
        "C-62,monthly_count,pro\n"
    )
    env = pipeline.env()

    def load() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "streams.cli", "load-statuses", str(csv_file), "--operator", "crm-import"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    done = await asyncio.to_thread(load)
    assert done.returncode == 1, done.stderr
    assert "2 accepted, 1 rejected" in done.stdout
    assert "line 3: status: 'diamond' is not a level of 'monthly_amount'" in done.stderr

    def batch_changes() -> list[dict[str, Any]]:
        return [c for c in records(outputs, pipeline, "status-changes") if c["reason"] == "batch"]

    await outputs.wait_for(lambda: len(batch_changes()) == 2, what="two batch status changes")
    by_customer = {c["customer_id"]: c for c in batch_changes()}
    assert (by_customer["C-60"]["previous"], by_customer["C-60"]["current"]) == ("bronze", "gold")
    assert by_customer["C-60"]["operator"] == "crm-import" and by_customer["C-60"]["comment"] == "won the raffle"
    assert by_customer["C-60"]["valid_until"].startswith("2100-01-01T00:00:00")
    assert (by_customer["C-62"]["previous"], by_customer["C-62"]["current"]) == (None, "pro")

    # Loading the same file again assigns nothing twice.
    assert (await asyncio.to_thread(load)).returncode == 1
    await asyncio.sleep(3)
    assert len(batch_changes()) == 2


def latest_snapshot(outputs: OutputReader, pipeline: PipelineUnderTest, customer: str) -> dict[str, Any] | None:
    snapshots = [s for s in records(outputs, pipeline, "customer-status") if s["customer_id"] == customer]
    return max(snapshots, key=lambda s: s["version"]) if snapshots else None


def amount_of(snapshot: dict[str, Any] | None) -> str | None:
    if snapshot is None or not snapshot["statuses"]:
        return None
    return str(next(s["counter"] for s in snapshot["statuses"] if s["status_system"] == "monthly_amount"))


async def applied(http: ClientSession, port: int, event_type: str) -> None:
    """Waits until the worker's /metrics count a card event of this type as applied (card events
    change only the card's record, which publishes nothing)."""
    line = f'loyalty_customer_events_total{{outcome="applied",type="{event_type}"}} 1.0'

    async def counted() -> bool:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            return line in await response.text()

    await eventually(counted, what=f"{event_type} applied")


async def test_cards_resolve_receipts_and_linking_merges_the_temporary_owner(
    pipeline: PipelineUnderTest, outputs: OutputReader, http: ClientSession
) -> None:
    port = free_port()
    pipeline.start_worker(WEB_PORT=str(port))
    await outputs.start()
    card = {"card_number": "7000001"}
    await send(pipeline, [receipt("K-0", None, "2026-11-02T12:00:00+01:00", "5.00", **card)])  # unknown card
    await answered(outputs, ["K-0"])
    await send_events(pipeline, [customer_event("CE-1", "card_issued", "TMP-1", "2026-11-02T13:00:00+01:00", **card)])
    await outputs.wait_for(lambda: latest_snapshot(outputs, pipeline, "TMP-1") is not None, what="the card's owner")
    await send(pipeline, [receipt("K-1", None, "2026-11-03T12:00:00+01:00", "80.00", **card)])
    await send(pipeline, [receipt("K-2", "C-70", "2026-11-04T12:00:00+01:00", "100.00")])
    await answered(outputs, ["K-1", "K-2"])
    await send_events(
        pipeline,
        [
            customer_event("CE-2", "registered", "C-70", "2026-11-05T10:00:00+01:00"),
            customer_event("CE-3", "card_linked", "C-70", "2026-11-05T10:01:00+01:00", **card),
            customer_event("CE-4", "card_linked", "C-71", "2026-11-05T10:02:00+01:00", **card),  # already a member's
        ],
    )
    await outputs.wait_for(lambda: amount_of(latest_snapshot(outputs, pipeline, "C-70")) == "180.00", what="merge")
    await send(pipeline, [receipt("K-3", None, "2026-11-06T12:00:00+01:00", "10.00", **card)])
    await send(pipeline, [receipt("K-4", "TMP-1", "2026-11-06T13:00:00+01:00", "10.00")])  # the old id
    await answered(outputs, ["K-3", "K-4"])
    await outputs.wait_for(lambda: amount_of(latest_snapshot(outputs, pipeline, "C-70")) == "200.00", what="K-3, K-4")

    by_receipt = {m["receipt_id"]: m["customer_id"] for m in records(outputs, pipeline, "receipt-messages")}
    assert by_receipt == {"K-0": None, "K-1": "TMP-1", "K-2": "C-70", "K-3": "C-70", "K-4": "C-70"}
    temporary = latest_snapshot(outputs, pipeline, "TMP-1")
    assert temporary is not None and temporary["client_state"] == "deleted" and temporary["statuses"] == []
    member = latest_snapshot(outputs, pipeline, "C-70")
    assert member is not None and member["client_state"] == "registered"
    (letter,) = records(outputs, pipeline, "dead-letters")
    assert "card 7000001 already belongs to member C-70" in letter["error"]

    # Blocked, the card buys anonymously; unblocked, it counts for the member again.
    await send_events(pipeline, [customer_event("CE-B1", "card_blocked", "C-70", "2026-11-06T14:00:00+01:00", **card)])
    await applied(http, port, "card_blocked")  # different topics have no order: let the block land first
    await send(pipeline, [receipt("K-B1", None, "2026-11-06T15:00:00+01:00", "10.00", **card)])
    await answered(outputs, ["K-B1"])
    await send_events(
        pipeline, [customer_event("CE-B2", "card_unblocked", "C-70", "2026-11-06T16:00:00+01:00", **card)]
    )
    await applied(http, port, "card_unblocked")
    await send(pipeline, [receipt("K-B2", None, "2026-11-06T17:00:00+01:00", "10.00", **card)])
    await answered(outputs, ["K-B2"])
    by_receipt = {m["receipt_id"]: m["customer_id"] for m in records(outputs, pipeline, "receipt-messages")}
    assert (by_receipt["K-B1"], by_receipt["K-B2"]) == (None, "C-70")
    await outputs.wait_for(lambda: amount_of(latest_snapshot(outputs, pipeline, "C-70")) == "210.00", what="K-B2")

    # Excluded: the card's record forgets the member, so the card buys anonymously and
    # can be linked by no one (it would have to be issued again).
    await send_events(pipeline, [customer_event("CE-5", "excluded", "C-70", "2026-11-07T10:00:00+01:00")])
    await outputs.wait_for(
        lambda: (latest_snapshot(outputs, pipeline, "C-70") or {}).get("client_state") == "excluded", what="exclusion"
    )
    await send(pipeline, [receipt("K-5", None, "2026-11-08T12:00:00+01:00", "10.00", **card)])
    await answered(outputs, ["K-5"])
    assert [m["customer_id"] for m in records(outputs, pipeline, "receipt-messages") if m["receipt_id"] == "K-5"] == [
        None
    ]
    await send_events(pipeline, [customer_event("CE-6", "card_linked", "C-72", "2026-11-08T13:00:00+01:00", **card)])
    await outputs.wait_for(lambda: len(records(outputs, pipeline, "dead-letters")) == 2, what="the refused link")
    assert "card 7000001 was never issued" in records(outputs, pipeline, "dead-letters")[1]["error"]


async def test_a_manual_status_holds_until_valid_until_then_the_rules_decide(
    pipeline: PipelineUnderTest, outputs: OutputReader
) -> None:
    pipeline.start_worker()
    await outputs.start()
    await send(pipeline, [receipt("M-1", "C-80", "2026-11-03T12:00:00+01:00", "20.00")])
    await answered(outputs, ["M-1"])
    command = {
        "command_id": "CC-80",
        "type": "set_status",
        "customer_id": "C-80",
        "status_system": "monthly_amount",
        "status": "gold",
        "valid_until": "2026-11-10",
        "reason": "complaint settled",
        "operator": "agent-17",
        "requested_at": "2026-11-04T10:00:00+01:00",
    }
    await produce(pipeline.bootstrap, pipeline.topic("status-commands"), [(b"C-80", json.dumps(command).encode())])
    await outputs.wait_for(lambda: any(c["reason"] == "manual" for c in records(outputs, pipeline, "status-changes")))
    await send(pipeline, [receipt("M-2", "C-80", "2026-11-10T18:00:00+01:00", "5.00")])  # the last day: still gold
    await send(pipeline, [receipt("M-3", "C-80", "2026-11-11T09:00:00+01:00", "5.00")])  # expired
    await answered(outputs, ["M-2", "M-3"])

    manual = [c for c in records(outputs, pipeline, "status-changes") if c["reason"] == "manual"]
    assert [(c["previous"], c["current"], c["caused_by"], c.get("operator")) for c in manual] == [
        ("bronze", "gold", "CC-80", "agent-17"),
        ("gold", "bronze", "M-3", None),
    ]
    assert manual[0]["valid_until"] == "2026-11-11T00:00:00+01:00"
    assert manual[1]["effective_from"] == "2026-11-11T00:00:00+01:00"
    lines = {m["receipt_id"]: m["lines"][0] for m in records(outputs, pipeline, "receipt-messages")}
    assert lines["M-2"] == "Your status: Gold (10% off)"
    assert lines["M-3"] == "Your status: Bronze (2% off)"
