"""The Redis sink: the customer's current status for the API and POS, and receipt messages to poll.

Keys (the prefix defaults to `loyalty:`):

- `{prefix}customer:{customer_id}`: a hash with `client_state`, `version`,
  `updated_at`, `statuses` (the API's list as JSON) and, per status system,
  `{system}:status`, `{system}:valid_until`, `{system}:counter`,
  `{system}:period` (a field whose value is null is left out). For an excluded
  customer only `client_state`, `version` and `updated_at` remain, and the
  receipt-message keys of the receipts the customer had are deleted. A snapshot
  replaces the whole hash, but only when its `version` is greater than the
  stored one, so an old snapshot replayed after a newer one never wins.
- `{prefix}receipt-message:{receipt_id}`: JSON `{"lines", "pos_id",
  "customer_id", "event_id"}`, expiring after a day. A message of a customer whose
  hash says `excluded` is not written: it was made before the exclusion and arrived
  after it (an exclusion is final), and the exclusion deleted its siblings.

A batch is one script call, one round trip applied as a whole: the newest snapshot
of each customer in it (with every receipt an exclusion in it erases), then the
receipt messages, so that a message is checked against the state the whole batch
leaves.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript

from models.events import ERASED_RECEIPTS
from sinks.base import CUSTOMER_STATUS, OUTSIDE_PROGRAMME_STATES, RECEIPT_MESSAGE, Sink, SinkRecord, SinkUnavailable

__all__ = ["RedisSink"]

logger = logging.getLogger(__name__)

#: Applies a batch. ARGV[1]: the batch as JSON, `{"s": [[customer key, version, field, value, ...], ...],
#: "e": [message key, ...], "m": [[message key, customer key or "", message], ...]}`; ARGV[2]: the
#: messages' expiry (s). A snapshot replaces the customer's hash unless the stored version is the
#: same or newer; the erased receipts' messages are deleted; a message is written unless its
#: customer's hash says excluded. Keys travel in ARGV, not KEYS: one argument for a whole batch,
#: which a single Redis server allows (a Redis Cluster would not).
_WRITE_BATCH = """
local batch = cjson.decode(ARGV[1])
local ttl = ARGV[2]
for _, s in ipairs(batch.s) do
  local stored = redis.call('HGET', s[1], 'version')
  if not stored or tonumber(stored) < s[2] then
    redis.call('DEL', s[1])
    redis.call('HSET', s[1], 'version', s[2], unpack(s, 3))
  end
end
for _, key in ipairs(batch.e) do
  redis.call('DEL', key)
end
for _, m in ipairs(batch.m) do
  if m[2] == '' or redis.call('HGET', m[2], 'client_state') ~= 'excluded' then
    redis.call('SET', m[1], m[3], 'EX', ttl)
  end
end
return 1
"""

#: Errors that mean "Redis cannot take writes now"; everything else is a bug.
_UNAVAILABLE = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError (a restarted Redis loading its data)
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica after a failover
    redis.exceptions.OutOfMemoryError,
    TimeoutError,
    OSError,
)

MESSAGE_TTL_SECONDS = 86_400


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisSink(Sink):
    """Writes `customer_status` snapshots and `receipt_message` events to Redis, one pipeline per batch."""

    name = "redis"
    kinds = frozenset({CUSTOMER_STATUS, RECEIPT_MESSAGE})

    def __init__(
        self,
        url: str,
        prefix: str = "loyalty:",
        *,
        message_ttl: int = MESSAGE_TTL_SECONDS,
        socket_timeout: float = 5.0,
        health_timeout: float = 1.0,
    ) -> None:
        self._url = url
        self.prefix = prefix
        self._message_ttl = message_ttl
        self._socket_timeout = socket_timeout
        self._health_timeout = health_timeout
        self._client: redis.asyncio.Redis | None = None
        self._write_batch: AsyncScript | None = None

    def customer_key(self, customer_id: str) -> str:
        return f"{self.prefix}customer:{customer_id}"

    def message_key(self, receipt_id: str) -> str:
        return f"{self.prefix}receipt-message:{receipt_id}"

    async def start(self) -> None:
        """Connects, checks the server answers and loads the upsert script; `SinkUnavailable` when it cannot."""
        if self._client is not None:
            return
        client = redis.asyncio.Redis.from_url(
            self._url,
            decode_responses=True,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=min(self._socket_timeout, 2.0),
            # Two quick reconnect attempts absorb a dropped connection; longer outages are the
            # runner's to back off from, so they surface fast as SinkUnavailable.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )
        try:
            await client.ping()
            write_batch = client.register_script(_WRITE_BATCH)
            write_batch.sha = await client.script_load(_WRITE_BATCH)
        except _UNAVAILABLE as exc:
            await client.aclose()
            raise SinkUnavailable(
                f"Redis at {_redact(self._url)} is unreachable ({exc}); start it or set REDIS_URL"
            ) from exc
        except BaseException:
            await client.aclose()
            raise
        self._client, self._write_batch = client, write_batch

    async def write(self, batch: Sequence[SinkRecord]) -> None:
        """Stores the batch in one script call (one round trip, applied as a whole); raises
        `SinkUnavailable` when Redis cannot be reached.

        Idempotent: the same batch again leaves the same data (message expiry restarts).
        A record of a kind this sink does not take is a bug in the caller (`ValueError`).
        """
        client = self._require_client()
        script = self._write_batch
        assert script is not None
        for record in batch:
            if record.kind not in self.kinds:
                raise ValueError(f"the redis sink takes {sorted(self.kinds)}, not {record.kind!r}")
        if not batch:
            return
        payload = self._payload(batch)
        try:
            try:
                await client.evalsha(script.sha, 0, payload, self._message_ttl)
            except redis.exceptions.NoScriptError:
                # Redis restarted since start() and lost its script cache: load it again and redo
                # the batch, which is safe because every write in it is idempotent.
                script.sha = await client.script_load(_WRITE_BATCH)
                await client.evalsha(script.sha, 0, payload, self._message_ttl)
        except _UNAVAILABLE as exc:
            raise SinkUnavailable(f"Redis at {_redact(self._url)} is unreachable: {exc}") from exc

    def _payload(self, batch: Sequence[SinkRecord]) -> bytes:
        """The batch as `_WRITE_BATCH` takes it: each customer's newest snapshot, every receipt an
        exclusion in the batch erases, then the messages, each checked against the state the
        snapshots leave."""
        newest: dict[str, dict[str, Any]] = {}
        erased: list[str] = []
        messages: list[list[str]] = []
        for record in batch:
            value = record.value
            if record.kind == CUSTOMER_STATUS:
                held = newest.get(value["customer_id"])
                if held is None or int(value["version"]) > int(held["version"]):
                    newest[value["customer_id"]] = value
                erased += (self.message_key(receipt_id) for receipt_id in value.get(ERASED_RECEIPTS, ()))
            else:
                message = {
                    "lines": value["lines"],
                    "pos_id": value["pos_id"],
                    "customer_id": value.get("customer_id"),
                    "event_id": value["event_id"],
                }
                customer_id = message["customer_id"]
                messages.append(
                    [
                        self.message_key(value["receipt_id"]),
                        self.customer_key(customer_id) if customer_id is not None else "",
                        orjson.dumps(message).decode(),
                    ]
                )
        snapshots = [
            [self.customer_key(customer_id), int(snapshot["version"]), *self._snapshot_fields(snapshot)]
            for customer_id, snapshot in newest.items()
        ]
        return orjson.dumps({"s": snapshots, "e": erased, "m": messages})

    @staticmethod
    def _snapshot_fields(value: dict[str, Any]) -> list[str]:
        fields: dict[str, Any] = {
            "client_state": value["client_state"],
            "updated_at": value["occurred_at"],
            "statuses": orjson.dumps(value["statuses"]).decode(),
        }
        for status in value["statuses"]:
            system = status["status_system"]
            for field in ("status", "valid_until", "counter", "period"):
                fields[f"{system}:{field}"] = status.get(field)
        flat: list[str] = []
        for field, field_value in fields.items():
            if field_value is not None:
                flat += [field, str(field_value)]
        return flat

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def healthy(self) -> bool:
        if self._client is None:
            return False
        try:
            async with asyncio.timeout(self._health_timeout):
                return bool(await self._client.ping())
        except _UNAVAILABLE:
            return False

    async def customer_status(self, customer_id: str) -> dict[str, Any] | None:
        """The API view `{"customer_id", "client_state", "statuses"}`, or None when nothing is stored.

        Raises `SinkUnavailable` when Redis cannot be reached (the API answers 503, not 404).
        """
        client = self._require_client()
        try:
            client_state, statuses = await client.hmget(self.customer_key(customer_id), ["client_state", "statuses"])
        except _UNAVAILABLE as exc:
            raise SinkUnavailable(f"Redis at {_redact(self._url)} is unreachable: {exc}") from exc
        if (
            client_state is None or client_state in OUTSIDE_PROGRAMME_STATES
        ):  # a tombstone that keeps older snapshots out
            return None
        return {"customer_id": customer_id, "client_state": client_state, "statuses": json.loads(statuses or "[]")}

    async def receipt_message(self, receipt_id: str) -> dict[str, Any] | None:
        """`{"lines", "pos_id", "customer_id", "event_id"}` for a receipt, or None when absent or expired."""
        client = self._require_client()
        try:
            stored = await client.get(self.message_key(receipt_id))
        except _UNAVAILABLE as exc:
            raise SinkUnavailable(f"Redis at {_redact(self._url)} is unreachable: {exc}") from exc
        if stored is None:
            return None
        message: dict[str, Any] = json.loads(stored)
        return message

    async def erase_customer(self, customer_id: str) -> None:
        """Deletes the customer's hash (exclusion). A snapshot written afterwards creates it again."""
        client = self._require_client()
        try:
            await client.delete(self.customer_key(customer_id))
        except _UNAVAILABLE as exc:
            raise SinkUnavailable(f"Redis at {_redact(self._url)} is unreachable: {exc}") from exc

    def _require_client(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise RuntimeError("RedisSink.start() has not been called (or stop() has)")
        return self._client
