"""The customers table on disk (LOYALTY_STORE=rocksdb): a worker restarted with its local
store reads only the changelog after it, and one whose local store was lost rebuilds it from
the whole changelog; either way every count comes out exactly as the core's."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from models.schema import LoyaltyConfig
from streams.local.probe import OutputReader
from tests.conftest import TEST_NOW, PipelineUnderTest
from tests.faults.test_faults import all_answered, assert_exact, send_paced, workload
from tests.integration.test_pipeline import receipt
from tests.reference import reference

pytestmark = pytest.mark.integration

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize("local_store", ["kept", "deleted"])
async def test_a_restarted_worker_counts_exactly_with_its_local_store_kept_or_deleted(
    pipeline: PipelineUnderTest, outputs: OutputReader, config: LoyaltyConfig, local_store: str
) -> None:
    receipts = workload(3000, seed=11, customers=300)
    first, second = receipts[:2000], receipts[2000:]
    expected = reference(config, receipts, TEST_NOW)
    worker = pipeline.start_worker(LOYALTY_STORE="rocksdb")
    await outputs.start()
    await send_paced(pipeline, first, rate=1000)
    answered_first = reference(config, first, TEST_NOW).answered
    await outputs.wait_for(lambda: answered_first <= outputs.arrivals.keys(), timeout=300, what="the first part")
    assert worker.stop() == 0
    data = Path(worker.env["LOYALTY_DATA_DIR"])
    assert any(data.rglob("CURRENT")), "no RocksDB database in the worker's data directory"
    if local_store == "deleted":
        shutil.rmtree(data)
    again = pipeline.start_worker(LOYALTY_STORE="rocksdb")
    assert again.env["LOYALTY_DATA_DIR"] == str(data)
    await send_paced(pipeline, second, rate=1000)
    await all_answered(outputs, pipeline, expected, timeout=300)
    assert_exact(outputs, pipeline, expected)


async def test_a_receipt_dated_before_a_heavy_customer_s_2000_counts_once_and_its_resend_is_answered(
    pipeline: PipelineUnderTest, outputs: OutputReader, config: LoyaltyConfig
) -> None:
    # More than `receipt_memory` (400) in the window: the state lets the oldest go to the
    # receipt store, so one dated before all of them is still told apart from a resend.
    start = datetime(2026, 11, 2, 9, tzinfo=BERLIN)
    heavy = [receipt(f"H-{n}", "C-1", (start + timedelta(minutes=5 * n)).isoformat(), "1.00") for n in range(2000)]
    early = receipt("EARLY-1", "C-1", (start - timedelta(hours=2)).isoformat(), "7.00")
    sent = [*heavy, early, early]
    expected = reference(config, sent, TEST_NOW)
    assert not expected.refused
    pipeline.start_worker(LOYALTY_STORE="rocksdb")
    await outputs.start()
    await send_paced(pipeline, heavy, rate=1000)
    await send_paced(pipeline, [early], rate=1000)
    await outputs.wait_for(lambda: "EARLY-1" in outputs.arrivals, timeout=300, what="EARLY-1's message")
    await send_paced(pipeline, [early], rate=1000)
    messages = pipeline.topic("receipt-messages")
    await outputs.wait_for(
        lambda: sum(m["receipt_id"] == "EARLY-1" for m in outputs.records[messages]) == 2,
        timeout=120,
        what="the resend's message",
    )
    first, again = (m for m in outputs.records[messages] if m["receipt_id"] == "EARLY-1")
    assert first == again  # the very message of the first time
    await all_answered(outputs, pipeline, expected, timeout=300)
    assert_exact(outputs, pipeline, expected)
    assert not outputs.records[pipeline.topic("dead-letters")]
