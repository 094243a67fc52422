"""Sinks and serving through a real worker: Redis, PostgreSQL, the status API, /health and /metrics."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession

from streams.local.probe import OutputReader, SinksProcess
from streams.local.service import free_port
from tests.conftest import PipelineUnderTest
from tests.integration.test_pipeline import answered, receipt, records, send

pytestmark = pytest.mark.integration

TOKEN = "test-token"


class Served:
    def __init__(self, pipeline: PipelineUnderTest, redis_url: str, database_url: str) -> None:
        self.pipeline = pipeline
        self.redis_url = redis_url
        self.database_url = database_url
        self.prefix = f"{pipeline.prefix}loyalty:"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.sinks_port = free_port()
        self.sinks: SinksProcess | None = None

    def _env(self, **overrides: str) -> dict[str, str]:
        return {
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": self.database_url,
            "LOYALTY_REDIS_PREFIX": self.prefix,
            "API_TOKEN": TOKEN,
            **overrides,
        }

    def start(self) -> None:
        """One process: the worker runs the sinks too."""
        self.pipeline.start_worker(**self._env(LOYALTY_SINKS="redis,postgres", WEB_PORT=str(self.port)))

    def start_apart(self) -> None:
        """As deployed: a worker without sinks on `port`, `loyalty sinks` on `sinks_port`."""
        self.pipeline.start_worker(**self._env(LOYALTY_SINKS="", WEB_PORT=str(self.port)))
        env = self.pipeline.env(**self._env(WEB_PORT=str(self.sinks_port)))
        self.sinks = SinksProcess(env, self.pipeline.workdir / "sinks.log").start()

    def stop(self) -> None:
        if self.sinks is not None:
            self.sinks.stop()


@pytest.fixture
def served(pipeline: PipelineUnderTest, redis_url: str, postgres_dsn: str) -> Iterator[Served]:
    database = f"loyalty_{pipeline.prefix.strip('-')}"
    served = Served(pipeline, redis_url, f"{postgres_dsn.rsplit('/', 1)[0]}/{database}")
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


async def eventually(probe: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def get_json(http: ClientSession, url: str) -> tuple[int, Any]:
    try:
        async with http.get(url) as response:
            return response.status, await response.json(content_type=None)
    except OSError:
        return 0, None


async def test_status_api_sinks_and_metrics(
    served: Served, pipeline: PipelineUnderTest, outputs: OutputReader, http: ClientSession
) -> None:
    served.start()
    await outputs.start()
    sent = [
        receipt("A-1", "C-10", "2026-09-03T12:00:00+02:00", "60.00"),
        receipt("A-2", "C-10", "2026-09-04T12:00:00+02:00", "60.25"),
        receipt("A-3", "C-11", "2026-09-04T13:00:00+02:00", "20.00"),
    ]
    await send(pipeline, [*sent, sent[0]])  # A-1 twice: a POS retry
    await answered(outputs, ["A-1", "A-2", "A-3"])

    async def status_of(customer: str) -> Any:
        code, body = await get_json(http, f"{served.base}/customers/{customer}/status")
        return body if code == 200 and body["statuses"][0]["counter"] == "120.25" else None

    body = await eventually(lambda: status_of("C-10"), what="C-10 in the status API")
    amount = body["statuses"][0]
    assert body["customer_id"] == "C-10" and body["client_state"] == "registered"
    assert {
        k: amount[k] for k in ("status_system", "status", "name", "period", "counter", "next_status", "remaining")
    } == {
        "status_system": "monthly_amount",
        "status": "bronze",
        "name": "Bronze",
        "period": "2026-09",
        "counter": "120.25",
        "next_status": "gold",
        "remaining": "79.76",
    }
    assert amount["privileges"] == {"discount_percent": 2, "favorite_products": 2}
    code, _ = await get_json(http, f"{served.base}/customers/NOBODY/status")
    assert code == 404

    # Redis: the customer hash and the receipt message, as the contract names them.
    redis = aioredis.from_url(served.redis_url)
    try:
        fields = await redis.hgetall(f"{served.prefix}customer:C-10")
        assert fields[b"monthly_amount:status"] == b"bronze"
        assert fields[b"monthly_amount:counter"] == b"120.25"
        # Snapshots and messages are separate topics: the message may land a moment later.
        raw = await eventually(lambda: redis.get(f"{served.prefix}receipt-message:A-2"), what="A-2's message in Redis")
        message = json.loads(raw)
        assert message["lines"][0] == "Your status: Bronze (2% off)"
        assert 0 < await redis.ttl(f"{served.prefix}receipt-message:A-2") <= 86400
    finally:
        await redis.aclose()

    # PostgreSQL: every event once, although A-1's were published twice.
    connection = await asyncpg.connect(served.database_url)
    try:

        async def messages_stored() -> bool:
            return await connection.fetchval("SELECT count(*) FROM receipt_messages") == 3

        await eventually(messages_stored, what="three receipt messages in PostgreSQL")

        def retried() -> list[dict[str, Any]]:
            return [m for m in records(outputs, pipeline, "receipt-messages") if m["receipt_id"] == "A-1"]

        await outputs.wait_for(lambda: len(retried()) == 2, what="the retry's message, sent again")
        assert retried()[0] == retried()[1]  # the same event twice: PostgreSQL must store it once
        published = {r["event_id"] for r in records(outputs, pipeline, "offer-triggers")}

        async def offers_stored() -> set[str]:
            return {row["event_id"] for row in await connection.fetch("SELECT event_id FROM offer_triggers")}

        # Equal sets, not counts: a replayed event stored twice would make more rows, a lost one fewer.
        await eventually(lambda: _same(offers_stored(), published), what="every offer in PostgreSQL")
        assert await offers_stored() == published

        async def level_of_c11() -> Any:
            return await connection.fetchval(
                "SELECT status FROM customer_statuses WHERE customer_id = 'C-11' AND status_system = 'monthly_count'"
            )

        assert await eventually(level_of_c11, what="C-11 in customer_statuses") == "basic"
    finally:
        await connection.close()

    # /metrics counts what happened; /health sees all three services.
    async with http.get(f"{served.base}/metrics") as response:
        text = await response.text()
    assert 'loyalty_receipts_total{outcome="counted",type="sale"} 3.0' in text
    assert 'loyalty_receipts_total{outcome="duplicate",type="sale"} 1.0' in text
    assert "loyalty_end_to_end_seconds_bucket" in text
    assert 'loyalty_sink_writes_total{sink="postgres"}' in text

    # /health sees all three services and, per sink, what it has not written (nothing, once it
    # has caught up: the lag is measured against the topics' end offsets every second).
    async def caught_up() -> Any:
        code, body = await get_json(http, f"{served.base}/health")
        return (code, body) if code == 200 and all(s["lag"] == 0 for s in body["sinks"].values()) else None

    code, health = await eventually(caught_up, what="/health with both sinks caught up")
    sinks = health.pop("sinks")
    assert (code, health) == (200, {"status": "ok", "broker": "up", "redis": "up", "postgres": "up"})
    topic = pipeline.topic
    assert sinks == {
        "redis": {
            "up": True,
            "lag": 0,
            "lag_by_topic": {topic("receipt-messages"): 0, topic("customer-status"): 0},
            "oldest_unwritten_seconds": 0.0,
        },
        "postgres": {
            "up": True,
            "lag": 0,
            "lag_by_topic": {
                topic(name): 0 for name in ("status-changes", "offer-triggers", "receipt-messages", "customer-status")
            },
            "oldest_unwritten_seconds": 0.0,
        },
    }
    async with http.get(f"{served.base}/metrics") as response:
        text = await response.text()
    assert f'loyalty_sink_consumer_lag{{sink="postgres",topic="{topic("status-changes")}"}} 0.0' in text
    assert 'loyalty_sink_oldest_unwritten_seconds{sink="redis"} 0.0' in text


async def test_manual_status_change_over_http(
    served: Served, pipeline: PipelineUnderTest, outputs: OutputReader, http: ClientSession
) -> None:
    served.start()
    await outputs.start()
    await send(pipeline, [receipt("M-1", "C-20", "2026-11-03T12:00:00+01:00", "10.00")])
    await answered(outputs, ["M-1"])
    url = f"{served.base}/customers/C-20/status"
    await eventually(lambda: _ok(http, url), what="C-20 in the status API")

    change = {"status_system": "monthly_amount", "status": "gold", "reason": "complaint", "operator": "agent-17"}
    async with http.post(url, json=change) as response:
        assert response.status == 401
    async with http.post(url, json=change, headers={"Authorization": "Bearer wrong"}) as response:
        assert response.status == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad = {"status_system": "monthly_amount", "status": "platinum", "valid_until": "someday", "operator": 7}
    async with http.post(url, json=bad, headers=auth) as response:
        assert response.status == 422
        problems = (await response.json())["problems"]
    assert problems == [
        "status: 'platinum' is not a level of 'monthly_amount' (bronze, silver, gold)",
        "valid_until: 'someday' is not a date like 2026-12-31",
        "operator: must be a string of at most 200 characters",
    ]
    async with http.post(url, json=change | {"command_id": f"CC-{uuid.uuid4().hex[:6]}"}, headers=auth) as response:
        assert response.status == 202
        command_id = (await response.json())["command_id"]

    async def manual_change() -> list[dict[str, Any]]:
        return [c for c in records(outputs, pipeline, "status-changes") if c["caused_by"] == command_id]

    (event,) = await eventually(manual_change, what="the manual status change")
    assert (event["previous"], event["current"], event["reason"], event["operator"], event["comment"]) == (
        "bronze",
        "gold",
        "manual",
        "agent-17",
        "complaint",
    )

    async def gold() -> bool:
        code, body = await get_json(http, url)
        return code == 200 and body["statuses"][0]["status"] == "gold"

    await eventually(gold, what="the manual Gold in the next GET")
    connection = await asyncpg.connect(served.database_url)
    try:
        # The PostgreSQL sink runs in its own consumer group: it may be a moment behind Redis.
        async def stored() -> Any:
            return await connection.fetchrow(
                "SELECT operator, comment, reason FROM status_changes WHERE caused_by = $1", command_id
            )

        row = await eventually(stored, what="the manual change in PostgreSQL")
    finally:
        await connection.close()
    assert dict(row) == {"operator": "agent-17", "comment": "complaint", "reason": "manual"}


async def _same(found: Any, expected: set[str]) -> bool:
    return bool(await found == expected)


async def _ok(http: ClientSession, url: str) -> bool:
    code, _ = await get_json(http, url)
    return code == 200
