"""A real Prometheus server scrapes a worker and answers for the receipts it counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientError

from streams.local.probe import OutputReader
from streams.local.service import free_port
from tests.conftest import PipelineUnderTest
from tests.integration.test_pipeline import answered, receipt, send
from tests.prometheus import PrometheusUnderTest

pytestmark = pytest.mark.integration


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[tuple[PrometheusUnderTest, int]]:
    """Returns (the server, the port it will scrape); the worker must serve /metrics on that port."""
    target_port = free_port()
    server = PrometheusUnderTest(
        tmp_path / "prometheus",
        {"loyalty-worker": [f"127.0.0.1:{target_port}"]},
        scrape_interval="1s",
        evaluation_interval="1s",
        only_these_jobs=True,
    )
    await server.start()
    try:
        yield server, target_port
    finally:
        await server.stop()


async def test_prometheus_scrapes_the_receipts_counter(
    pipeline: PipelineUnderTest, outputs: OutputReader, prometheus: tuple[PrometheusUnderTest, int]
) -> None:
    server, worker_port = prometheus
    pipeline.start_worker(WEB_PORT=str(worker_port))
    await outputs.start()
    sent = [receipt(f"PR-{n}", f"C-{n % 3}", f"2026-09-0{1 + n}T12:00:00+02:00", "12.00") for n in range(7)]
    await send(pipeline, sent)
    await answered(outputs, [r["receipt_id"] for r in sent])

    query = 'sum(loyalty_receipts_total{outcome="counted"})'
    deadline = time.monotonic() + 90
    value = None
    while time.monotonic() < deadline:
        try:
            result = await server.query(query)
            value = float(result[0]["value"][1]) if result else None
        except (ClientError, OSError, KeyError, ValueError):
            value = None
        if value == 7.0:
            break
        await asyncio.sleep(0.5)
    assert value == 7.0
