"""The customers table on disk (LOYALTY_STORE=rocksdb): a worker restarted with its local
store reads only the changelog after it, and one whose local store was lost rebuilds it from
the whole changelog; either way every count comes out exactly as the core's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from config.schema import LoyaltyConfig
from streams.probe import OutputReader
from tests.conftest import TEST_NOW, PipelineUnderTest
from tests.faults.test_faults import all_answered, assert_exact, send_paced, workload
from tests.reference import reference

pytestmark = pytest.mark.integration


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
