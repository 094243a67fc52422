"""HTTP on every worker: the status API, health and metrics.

`GET /customers/{id}/status` is answered from Redis, which the Redis sink keeps
current from the `customer-status` snapshots: any worker answers for any
customer in one round trip, with no forwarding between workers. The answer is
as fresh as the sink (milliseconds behind the pipeline when healthy).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import Mapping
from datetime import date
from typing import Any

from faust.web import Request, Response, View

from sinks.base import SinkUnavailable
from sinks.redis import RedisSink
from sinks.service import HealthCheck, Sinks, health
from streams.app import Pipeline

logger = logging.getLogger(__name__)


class StatusStore:
    """The status API's Redis: a client of its own, connected on first use, so a worker whose
    Redis sink runs elsewhere (`loyalty sinks`) answers from the same keys."""

    def __init__(self, redis: RedisSink) -> None:
        self._redis = redis
        self._started = False
        self._lock = asyncio.Lock()

    async def redis(self) -> RedisSink:
        """The started client; `SinkUnavailable` while Redis cannot be reached."""
        if not self._started:
            async with self._lock:
                if not self._started:
                    await self._redis.start()
                    self._started = True
        return self._redis

    async def healthy(self) -> bool:
        try:
            redis = await self.redis()
        except SinkUnavailable:
            return False
        return await redis.healthy()


def set_status_problems(body: Any, p: Pipeline) -> list[str]:
    """Every problem with a `POST /customers/{id}/status` body, by field."""
    if not isinstance(body, dict):
        return ["body: must be a JSON object"]
    problems: list[str] = []
    system_id = body.get("status_system")
    system = None
    if not isinstance(system_id, str) or not system_id:
        problems.append("status_system: required")
    else:
        try:
            system = p.config.system(system_id)
        except KeyError:
            known = ", ".join(s.id for s in p.config.status_systems)
            problems.append(f"status_system: unknown status system {system_id!r} ({known})")
    status = body.get("status")
    if not isinstance(status, str) or not status:
        problems.append("status: required")
    elif system is not None and status not in {level.id for level in system.levels}:
        known = ", ".join(level.id for level in system.levels)
        problems.append(f"status: {status!r} is not a level of {system.id!r} ({known})")
    valid_until = body.get("valid_until")
    if valid_until is not None:
        try:
            day = date.fromisoformat(valid_until) if isinstance(valid_until, str) else None
        except ValueError:
            day = None
        if day is None:
            problems.append(f"valid_until: {valid_until!r} is not a date like 2026-12-31")
        elif day < p.clock.now().astimezone(p.config.timezone).date():
            problems.append(f"valid_until: {valid_until} is in the past")
    for field in ("reason", "operator", "command_id"):
        value = body.get(field)
        if value is not None and (not isinstance(value, str) or len(value) > 200):
            problems.append(f"{field}: must be a string of at most 200 characters")
    return problems


def register_views(p: Pipeline, store: StatusStore, checks: Mapping[str, HealthCheck], sinks: Sinks | None) -> None:
    """The worker's routes; `/health` adds, per sink the worker runs, what it has not written yet."""
    app = p.app
    token = p.settings.api_token
    commands_topic = p.status_commands.get_topic_name()

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(p.metrics.exposition(), content_type="text/plain")

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            status, body = await health(checks, sinks)
            return self.json(body, status=status)

    @app.page("/customers/{customer_id}/status")
    class CustomerStatus(View):
        async def get(self, request: Request, customer_id: str) -> Response:
            try:
                found = await (await store.redis()).customer_status(customer_id)
            except Exception:
                logger.warning("status lookup failed", exc_info=True)
                return self.json({"error": "status store unavailable, try again"}, status=503)
            if found is None or found.get("client_state") == "excluded":
                return self.json({"error": f"unknown customer {customer_id!r}"}, status=404)
            return self.json(found)

        async def post(self, request: Request, customer_id: str) -> Response:
            if token is None:
                return self.json({"error": "writes are refused: API_TOKEN is not set on this worker"}, status=403)
            given = request.headers.get("Authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return self.json({"error": "missing or wrong bearer token"}, status=401)
            try:
                body = json.loads(await request.read())
            except (ValueError, UnicodeDecodeError):
                return self.json({"problems": ["body: not JSON"]}, status=422)
            problems = set_status_problems(body, p)
            if problems:
                return self.json({"problems": problems}, status=422)
            command = {
                "command_id": body.get("command_id") or f"api-{uuid.uuid4()}",
                "type": "set_status",
                "customer_id": customer_id,
                "status_system": body["status_system"],
                "status": body["status"],
                "valid_until": body.get("valid_until"),
                "reason": body.get("reason"),
                "operator": body.get("operator"),
                "requested_at": p.clock.now().isoformat(),
            }
            future = await app.producer.send(
                commands_topic,
                customer_id.encode(),
                json.dumps(command).encode(),
                partition=None,
                timestamp=None,
                headers=None,
            )
            await future
            return self.json({"command_id": command["command_id"], "accepted": True}, status=202)
