"""Every query of every Grafana panel, run against a real Prometheus scraping a loaded worker.

The static checks (tests/unit/test_deploy.py) see that each query names an
exported metric; this sees that it returns data: a wrong label, a counter that
has no series until its first increment, or a function over the wrong type
would leave a blank panel that no static check notices. Prometheus runs through
the shipped `deploy/prometheus/prometheus.yml` (its targets rewritten to the
worker's port, its intervals as shipped), and `$__rate_interval` is replaced as
Grafana computes it for the dashboard's time range and the datasource's scrape
interval.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.local.probe import OutputReader, produce
from streams.local.prometheus import load_shipped
from tests.conftest import CHECKS, PipelineUnderTest
from tests.integration.test_pipeline import answered, receipt, send
from tests.integration.test_serving import Served
from tests.prometheus import PrometheusUnderTest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "loyalty.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"

#: Grafana's default when a Prometheus datasource sets no `timeInterval`.
GRAFANA_DEFAULT_SCRAPE = 15.0
#: The screen width the intervals are computed for (a panel's maxDataPoints is its width in pixels).
SCREEN_PIXELS = 1920
#: How long the panels may take to fill: the customers-per-level gauge is refreshed every 15 s.
FILL_TIMEOUT = 150.0

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Grafana's roundInterval (public/app/core/utils/rangeutil / @grafana/data): (below, rounded to), in ms.
_ROUNDING = [
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1500, 1000),
    (3500, 2000),
    (7500, 5000),
    (12500, 10000),
    (17500, 15000),
    (25000, 20000),
    (45000, 30000),
    (90000, 60000),
    (210000, 120000),
    (450000, 300000),
    (1050000, 600000),
    (2100000, 1200000),
    (5400000, 3600000),
    (9000000, 7200000),
    (16200000, 10800000),
    (32400000, 21600000),
    (86400000, 43200000),
]


def seconds(duration: str) -> float:
    """A Prometheus or Grafana duration: `5s`, `1m30s`, `250ms`."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|[smhdw])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * _UNITS[u] for n, u in parts)


def round_interval(ms: float) -> float:
    for below, rounded in _ROUNDING:
        if ms < below:
            return rounded
    return 86400000


def dashboard_range(dashboard: dict[str, Any]) -> float:
    """The dashboard's time range in seconds (`now-30m` to `now`)."""
    start, end = dashboard["time"]["from"], dashboard["time"]["to"]
    assert end == "now" and start.startswith("now-"), dashboard["time"]
    return seconds(start.removeprefix("now-"))


def datasource_scrape_interval() -> float:
    datasources = [
        ds
        for f in sorted(DATASOURCES.glob("*.y*ml"))
        for ds in yaml.safe_load(f.read_text())["datasources"]
        if ds["type"] == "prometheus"
    ]
    (prometheus,) = datasources
    interval = (prometheus.get("jsonData") or {}).get("timeInterval")
    return seconds(interval) if interval else GRAFANA_DEFAULT_SCRAPE


def grafana_intervals(panel: dict[str, Any], range_seconds: float, scrape: float) -> tuple[float, float]:
    """($__interval, $__rate_interval) in seconds, as Grafana sets them for this panel.

    $__interval: the range over the panel's data points (its width in pixels unless it
    sets maxDataPoints), rounded, at least the datasource's scrape interval;
    $__rate_interval: max($__interval + scrape interval, 4 * scrape interval).
    """
    points = panel.get("maxDataPoints") or round(panel["gridPos"]["w"] / 24 * SCREEN_PIXELS)
    interval = max(round_interval(range_seconds * 1000 / points) / 1000, scrape)
    return interval, max(interval + scrape, 4 * scrape)


def _duration(value: float) -> str:
    ms = round(value * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str  # with Grafana's variables replaced
    step: float

    def __str__(self) -> str:
        return f"panel {self.panel!r}, query {self.ref}: {self.expr}"


def panel_queries(dashboard: dict[str, Any], scrape: float) -> tuple[int, list[PanelQuery]]:
    """(how many panels have queries, every query with its variables replaced)."""
    range_seconds = dashboard_range(dashboard)
    panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
    queries = []
    with_queries = 0
    for panel in panels:
        targets = [t for t in panel.get("targets", []) if "expr" in t]
        if not targets:
            continue
        with_queries += 1
        interval, rate_interval = grafana_intervals(panel, range_seconds, scrape)
        for target in targets:
            expr = target["expr"]
            for name, value in (("__rate_interval", rate_interval), ("__interval", interval)):
                expr = expr.replace(f"${{{name}}}", _duration(value)).replace(f"${name}", _duration(value))
            assert "$" not in expr, f"{panel['title']}: a Grafana variable this check does not know: {expr}"
            queries.append(PanelQuery(panel["title"], target.get("refId", "?"), expr, interval))
    return with_queries, queries


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with at least one number (a NaN-only series draws nothing)."""
    return any(not math.isnan(float(value)) for series in result for _, value in series.get("values", []))


async def blank(server: PrometheusUnderTest, queries: list[PanelQuery], since: float) -> list[PanelQuery]:
    """The queries that return nothing over the time since `since`, as a panel would draw it."""
    now = time.time()
    empty = []
    for query in queries:
        if not has_data(await server.query_range(query.expr, since, now, query.step)):
            empty.append(query)
    return empty


@pytest.fixture
async def scraped(served: Served, tmp_path: Path) -> AsyncIterator[PrometheusUnderTest]:
    """A Prometheus through the shipped configuration, its intervals as shipped, scraping `served`'s
    worker and sinks process (every job of the shipped file)."""
    server = PrometheusUnderTest(
        tmp_path / "prometheus",
        {"loyalty-worker": [f"127.0.0.1:{served.port}"], "loyalty-sinks": [f"127.0.0.1:{served.sinks_port}"]},
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def test_grafana_intervals_match_grafana_for_the_shipped_dashboard() -> None:
    panel = {"gridPos": {"w": 12}}  # 960 px: 30 min / 960 = 1.875 s, rounded to 2 s, raised to the scrape
    assert grafana_intervals(panel, 1800, 5.0) == (5.0, 20.0)
    assert grafana_intervals(panel, 1800, 15.0) == (15.0, 60.0)
    assert grafana_intervals({"gridPos": {"w": 6}, "maxDataPoints": 100}, 6 * 3600, 5.0) == (300.0, 305.0)
    assert seconds("1m30s") == 90 and seconds("250ms") == 0.25


async def test_every_dashboard_query_returns_data(
    served: Served,
    pipeline: PipelineUnderTest,
    outputs: OutputReader,
    scraped: PrometheusUnderTest,
    request: pytest.FixtureRequest,
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    scrape = datasource_scrape_interval()
    assert scrape == seconds(load_shipped()["global"]["scrape_interval"]), (
        "the Grafana datasource's timeInterval must be Prometheus' scrape_interval"
    )
    panels, queries = panel_queries(dashboard, scrape)
    assert panels >= 14 and queries

    since = time.time()
    served.start_apart()
    await outputs.start()
    # A short load that touches every panel: counted and duplicate receipts, a fifth purchase
    # (an offer), an instant upgrade (a status change), a malformed receipt (a dead letter);
    # the sinks write it all to Redis and PostgreSQL (customers per level).
    load = [receipt(f"DB-{n}", "C-DB1", f"2026-11-0{n + 1}T12:00:00+01:00", "20.00") for n in range(5)]
    load += [receipt(f"DB-U{n}", f"C-DB{n + 2}", "2026-11-10T12:00:00+01:00", "150.00") for n in range(3)]
    await send(pipeline, [*load, load[0]])
    await produce(pipeline.bootstrap, pipeline.topic("receipts"), [(b"C-DB1", b"{not json")])
    await answered(outputs, [r["receipt_id"] for r in load])

    deadline = time.monotonic() + FILL_TIMEOUT
    empty = await blank(scraped, queries, since)
    while empty and time.monotonic() < deadline:
        await send(pipeline, [receipt(f"DB-T{time.monotonic_ns()}", "C-DB9", "2026-11-12T12:00:00+01:00", "5.00")])
        await asyncio.sleep(2.0)
        empty = await blank(scraped, queries, since)
    assert not empty, "blank panels:\n" + "\n".join(map(str, empty))

    # The check can fail: a misspelt metric in a panel is named.
    misspelt = [PanelQuery(queries[0].panel, "A", queries[0].expr.replace("loyalty_", "loyalty_x_"), queries[0].step)]
    assert await blank(scraped, misspelt, since) == misspelt
    request.config.stash.setdefault(CHECKS, []).append(
        f"[dashboard] {panels} panels, {len(queries)} queries: every one returned data from a real Prometheus"
    )
