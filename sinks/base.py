"""The one small interface every sink implements, and what a sink is handed.

Sinks read the pipeline's output topics in consumer groups of their own (see
`sinks/runner.py`), so a slow or broken sink holds back only its own offsets,
never the receipts. Writes are idempotent (keyed by `event_id`, or by customer
and version), which makes at-least-once delivery exactly-once in effect.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, NamedTuple

from models.errors import LoyaltyError
from models.state import OUTSIDE_PROGRAMME

#: `client_state` values (as snapshots carry them) of customers with no statuses to store or serve.
OUTSIDE_PROGRAMME_STATES = frozenset(state.value for state in OUTSIDE_PROGRAMME)

#: Record kinds, one per output topic a sink may read.
STATUS_CHANGE = "status_change"
OFFER_TRIGGER = "offer_trigger"
RECEIPT_MESSAGE = "receipt_message"
CUSTOMER_STATUS = "customer_status"


class SinkRecord(NamedTuple):
    """One output event as a sink takes it (a tuple: a runner makes one per event, and a frozen
    dataclass cost three times as much to make)."""

    kind: str
    key: str | None
    value: dict[str, Any]
    #: Where the record was read: (topic, partition, offset); None for one made in memory.
    source: tuple[str, int, int] | None = None
    #: `value` as the topic holds it (JSON), for a sink that passes it on as it is; None for one
    #: made in memory.
    raw: bytes | None = None


class SinkRefused(LoyaltyError):
    """The destination answered, and refused what it was given (a value it cannot store).

    The runner finds the records it refuses by writing smaller parts of the batch and sets
    each aside as a dead letter with this message; the rest is written."""


class SinkUnavailable(LoyaltyError):
    """The sink cannot be written to now; the runner retries after `retry_after` seconds (or its backoff)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Sink(abc.ABC):
    """A destination for output events.

    `start()` creates and checks the client (and, for a database, runs the
    migrations); `write()` stores one batch in as few round trips as it can and
    must be idempotent: the runner calls it again with the same records after a
    failure or a restart. Either raises `SinkUnavailable` when the destination
    cannot be reached (the runner retries it for as long as it takes); `write` raises
    `SinkRefused` when the destination refuses a value (the runner sets the record
    aside and goes on). Anything else is treated as a refusal of the batch too.
    """

    name: str = "sink"
    kinds: frozenset[str] = frozenset()  # the record kinds this sink wants

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def write(self, batch: Sequence[SinkRecord]) -> None: ...

    async def flush(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Makes everything written so far durable; a no-op for sinks that write synchronously."""

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def healthy(self) -> bool:
        """True when the destination answers now (for `GET /health`)."""
        return True


class MemorySink(Sink):
    """Keeps what it is given; for tests and the demo's dry runs."""

    name = "memory"

    def __init__(self, kinds: frozenset[str] | None = None) -> None:
        self.kinds = kinds or frozenset({STATUS_CHANGE, OFFER_TRIGGER, RECEIPT_MESSAGE, CUSTOMER_STATUS})
        self.records: list[SinkRecord] = []
        self.down = False

    async def start(self) -> None:
        pass

    async def write(self, batch: Sequence[SinkRecord]) -> None:
        if self.down:
            raise SinkUnavailable("memory sink switched off")
        self.records.extend(batch)

    async def stop(self) -> None:
        pass
