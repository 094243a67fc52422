"""A real Prometheus server scrapes a worker and answers for the receipts it counted."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientError, ClientSession
from prometheus_client.parser import text_string_to_metric_families

from streams.local.probe import OutputReader
from streams.local.service import free_port
from tests.conftest import PipelineUnderTest
from tests.integration.test_pipeline import answered, receipt, records, send
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


async def test_the_offer_and_status_change_counters_match_what_was_published(
    pipeline: PipelineUnderTest, outputs: OutputReader
) -> None:
    """The worker counts offers and status changes per batch; the counts are those of the events
    on the output topics, label by label."""
    port = free_port()
    pipeline.start_worker(WEB_PORT=str(port))
    await outputs.start()
    sent = [receipt(f"OC-{n}", f"C-{n % 4}", f"2026-09-{1 + n:02d}T12:00:00+02:00", "60.00") for n in range(24)]
    await send(pipeline, sent)
    await answered(outputs, [r["receipt_id"] for r in sent])
    offers = Counter(o["offer_id"] for o in records(outputs, pipeline, "offer-triggers"))
    changes = Counter(
        (c["status_system"], c["direction"], c["current"]) for c in records(outputs, pipeline, "status-changes")
    )
    assert offers and changes  # the load makes both

    def counted(text: str) -> tuple[Counter[str], Counter[tuple[str, str, str]]]:
        by_offer: Counter[str] = Counter()
        by_change: Counter[tuple[str, str, str]] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "loyalty_offers_total":
                    by_offer[sample.labels["offer"]] += int(sample.value)
                elif sample.name == "loyalty_status_changes_total":
                    labels = sample.labels
                    by_change[(labels["system"], labels["direction"], labels["level"])] += int(sample.value)
        return +by_offer, +by_change

    async with ClientSession() as http:
        deadline = time.monotonic() + 60
        while True:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                found = counted(await response.text())
            if found == (offers, changes) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert found == (offers, changes)
