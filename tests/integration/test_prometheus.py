"""A real Prometheus server scrapes a worker and answers for the receipts it counted."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession

from streams.embedded import free_port
from streams.probe import OutputReader
from tests.conftest import PipelineUnderTest
from tests.integration.test_pipeline import answered, receipt, send

pytestmark = pytest.mark.integration


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("Prometheus is not installed and there is no apt-get to install Debian's 'prometheus' package")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "prometheus"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot install Debian's 'prometheus' package: {' '.join(command)}: {done.stderr[-500:]}")
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip("Debian's 'prometheus' package installed no 'prometheus' binary on PATH")
    return found


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """Returns (base URL, the port it will scrape); the worker must serve /metrics on that port."""
    binary = prometheus_binary()
    target_port, port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: loyalty\n    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}", target_port
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


async def test_prometheus_scrapes_the_receipts_counter(
    pipeline: PipelineUnderTest, outputs: OutputReader, prometheus: tuple[str, int]
) -> None:
    base, worker_port = prometheus
    pipeline.start_worker(WEB_PORT=str(worker_port))
    await outputs.start()
    sent = [receipt(f"PR-{n}", f"C-{n % 3}", f"2026-09-0{1 + n}T12:00:00+02:00", "12.00") for n in range(7)]
    await send(pipeline, sent)
    await answered(outputs, [r["receipt_id"] for r in sent])

    query = 'sum(loyalty_receipts_total{outcome="counted"})'
    deadline = time.monotonic() + 90
    value = None
    async with ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{base}/api/v1/query", params={"query": query}) as response:
                    body = await response.json()
                result = body["data"]["result"]
                value = float(result[0]["value"][1]) if result else None
            except (OSError, KeyError, ValueError):
                value = None
            if value == 7.0:
                break
            await asyncio.sleep(0.5)
    assert value == 7.0
