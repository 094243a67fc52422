"""`loyalty sinks`: the sinks in processes of their own beside a worker that runs none."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession

from sinks.postgres import with_database
from streams.local.probe import OutputReader, SinksProcess
from streams.local.service import free_port
from tests.conftest import PipelineUnderTest
from tests.integration.test_pipeline import answered, receipt, records, send
from tests.integration.test_serving import eventually, get_json

pytestmark = pytest.mark.integration


async def test_each_sink_in_a_process_of_its_own_stores_what_a_worker_publishes(
    pipeline: PipelineUnderTest, outputs: OutputReader, redis_url: str, postgres_dsn: str, http: ClientSession
) -> None:
    database_url = with_database(postgres_dsn, f"loyalty_{pipeline.prefix.strip('-')}")
    stores = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "LOYALTY_REDIS_PREFIX": f"{pipeline.prefix}loyalty:",
    }
    worker_port = free_port()
    pipeline.start_worker(WEB_PORT=str(worker_port), **stores)  # LOYALTY_SINKS is empty: no sinks
    ports = {"redis": free_port(), "postgres": free_port()}
    processes = {
        name: SinksProcess(
            pipeline.env(WEB_PORT=str(port), **stores), pipeline.workdir / f"sinks-{name}.log", only=name
        ).start()
        for name, port in ports.items()
    }
    redis = aioredis.from_url(redis_url, decode_responses=True)
    try:
        await outputs.start()
        sent = [
            receipt("P-1", "C-80", "2026-11-03T12:00:00+01:00", "60.00"),
            receipt("P-2", "C-80", "2026-11-04T12:00:00+01:00", "70.00"),
            receipt("P-3", "C-81", "2026-11-04T13:00:00+01:00", "20.00"),
        ]
        await send(pipeline, sent)
        await answered(outputs, ["P-1", "P-2", "P-3"])

        # The worker answers the status API from what the Redis sink's process wrote.
        async def counted() -> Any:
            code, body = await get_json(http, f"http://127.0.0.1:{worker_port}/customers/C-80/status")
            return body if code == 200 and body["statuses"][0]["counter"] == "130.00" else None

        await eventually(counted, what="C-80 in the status API")
        assert await eventually(lambda: redis.get(f"{pipeline.prefix}loyalty:receipt-message:P-3"), what="P-3")

        # The PostgreSQL sink's process stores every event once.
        published = {
            table: {r["event_id"] for r in records(outputs, pipeline, topic)}
            for table, topic in (
                ("status_changes", "status-changes"),
                ("offer_triggers", "offer-triggers"),
                ("receipt_messages", "receipt-messages"),
            )
        }

        async def stored() -> dict[str, set[str]] | None:
            try:
                connection = await asyncpg.connect(database_url)
            except (OSError, asyncpg.PostgresError):
                return None
            try:
                found = {
                    t: {r["event_id"] for r in await connection.fetch(f"SELECT event_id FROM {t}")} for t in published
                }
            except asyncpg.PostgresError:
                return None
            finally:
                await connection.close()
            return found if found == published else None

        assert await eventually(stored, what="every event in PostgreSQL") == published

        # Each process serves its own /health (its store, and its sink with nothing left to
        # write) and /metrics; the worker, which runs no sink, reports none.
        for name, port in ports.items():
            topics = ["receipt-messages", "customer-status"]
            if name == "postgres":
                topics = ["status-changes", "offer-triggers", "receipt-messages", "customer-status"]

            async def caught_up(port: int = port, name: str = name) -> Any:
                code, body = await get_json(http, f"http://127.0.0.1:{port}/health")
                return body if code == 200 and body["sinks"][name]["lag"] == 0 else None

            health = await eventually(caught_up, what=f"the {name} process caught up")
            assert health == {
                "status": "ok",
                "broker": "up",
                name: "up",
                "sinks": {
                    name: {
                        "up": True,
                        "lag": 0,
                        "lag_by_topic": {pipeline.topic(t): 0 for t in topics},
                        "oldest_unwritten_seconds": 0.0,
                    }
                },
            }
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            assert f'loyalty_sink_writes_total{{sink="{name}"}}' in text
            assert f'loyalty_sink_oldest_unwritten_seconds{{sink="{name}"}} 0.0' in text
            assert "loyalty_receipts_total" not in text  # the pipeline's metrics are the worker's
        code, health = await get_json(http, f"http://127.0.0.1:{worker_port}/health")
        assert (code, health) == (200, {"status": "ok", "broker": "up", "redis": "up"})
        async with http.get(f"http://127.0.0.1:{worker_port}/metrics") as response:
            assert "loyalty_sink_writes_total{" not in await response.text()
    finally:
        await redis.aclose()
        exits = {name: process.stop(timeout=30) for name, process in processes.items()}
        maintenance = await asyncpg.connect(with_database(postgres_dsn, "postgres"))
        try:
            await maintenance.execute(f'DROP DATABASE IF EXISTS "{database_url.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await maintenance.close()
    assert exits == {"redis": 0, "postgres": 0}  # SIGTERM: each finished its batch and left
