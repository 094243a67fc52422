"""Output events with deterministic ids.

An event id is a UUIDv5 of the event's cause (receipt, command or period and the
rule that fired), so processing the same input again, after a crash or a POS
retry, yields byte-identical events that every consumer can de-duplicate.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

_NAMESPACE = uuid.UUID("6f1c1f55-4c1e-4c59-9a57-3a8f3f1f0b7e")
_NAMESPACE_BYTES = _NAMESPACE.bytes


#: The snapshot field listing the receipts whose per-receipt data the sinks must drop.
ERASED_RECEIPTS = "erased_receipts"


class OutputKind(enum.StrEnum):
    STATUS_CHANGE = "status_change"
    OFFER_TRIGGER = "offer_trigger"
    RECEIPT_MESSAGE = "receipt_message"
    CUSTOMER_STATUS = "customer_status"  # a snapshot of the customer's standing, for sinks and the API


class Output:
    """An event for an output topic: its kind, key and JSON value.

    A value may be made when it is first read (`make`), and the rules make each new event
    that way (a resend repeats a stored value): a customer's snapshot is made from the
    state, and most snapshots are never read, because the live pipeline sends only each
    customer's latest (streams/agents.py); a replay reads none of its events, and a what-if
    counts offers and status changes from what `OfferTrigger` and `StatusChange` carry. The
    other events' values are made from the arguments they were given, which nothing
    changes afterwards. Making them lazily costs the live pipeline, which reads them all,
    a little, and saves a replay more (benchmarks/core_instructions.py counts both).
    """

    __slots__ = ("_make", "_value", "key", "kind")

    def __init__(
        self,
        kind: OutputKind,
        key: str | None,
        value: dict[str, Any] | None = None,
        *,
        make: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        if (value is None) == (make is None):
            raise ValueError("an Output needs either its value or how to make it")
        self.kind, self.key, self._value, self._make = kind, key, value, make

    @property
    def value(self) -> dict[str, Any]:
        if self._value is None:
            assert self._make is not None
            self._value, self._make = self._make(), None
        return self._value

    @property
    def made(self) -> bool:
        """Whether the value exists yet (reading `value` makes it)."""
        return self._value is not None

    @property
    def erases(self) -> bool:
        """A customer-status snapshot naming receipts to erase (an exclusion's). Consumers must see
        this very one: a later snapshot that replaced it would not tell the sinks what to drop."""
        return self._value is not None and ERASED_RECEIPTS in self._value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Output):
            return NotImplemented
        return (self.kind, self.key, self.value) == (other.kind, other.key, other.value)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = self._value if self._value is not None else "<made when read>"
        return f"Output({self.kind!s}, {self.key!r}, {shown!r})"


class StatusChange(Output):
    """A status-change event, with what a what-if counts of it readable without making its value."""

    __slots__ = ("cause", "direction", "reason", "status_system")

    def __init__(
        self, key: str, make: Callable[[], dict[str, Any]], status_system: str, direction: str, reason: str, cause: str
    ):
        self.kind, self.key, self._value, self._make = _STATUS_CHANGE, key, None, make
        #: The text its event id is made from: one cause, one id (an input made again makes the same).
        self.cause, self.status_system, self.direction, self.reason = cause, status_system, direction, reason


class OfferTrigger(Output):
    """An offer-trigger event, with what a what-if counts of it readable without making its value."""

    __slots__ = ("cause", "offer_id", "points")

    def __init__(self, key: str, make: Callable[[], dict[str, Any]], offer_id: str, points: int | None, cause: str):
        # Output's fields set here rather than through super().__init__: a receipt makes two offers or more.
        self.kind, self.key, self._value, self._make = _OFFER_TRIGGER, key, None, make
        #: The text its event id is made from: one cause, one id (an input made again makes the same).
        self.cause, self.offer_id, self.points = cause, offer_id, points


# Read once (70 ns each).
_STATUS_CHANGE, _OFFER_TRIGGER, _RECEIPT_MESSAGE = (
    OutputKind.STATUS_CHANGE,
    OutputKind.OFFER_TRIGGER,
    OutputKind.RECEIPT_MESSAGE,
)


def event_id(*cause: str) -> str:
    """`str(uuid.uuid5(_NAMESPACE, "|".join(cause)))`, computed without building UUID objects
    (the larger part of an id's cost; a receipt makes three or more): SHA-1's first 32 hex digits,
    with the version digit set to 5 and the variant bits of the 17th digit to 10."""
    h = hashlib.sha1(_NAMESPACE_BYTES + "|".join(cause).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT_DIGIT[h[16]]}{h[17:20]}-{h[20:32]}"


#: A hex digit with its two top bits set to the RFC 4122 variant (10).
_VARIANT_DIGIT = {digit: "89ab"[int(digit, 16) & 0x3] for digit in "0123456789abcdef"}


#: The last instant `instant_text` wrote, and its text.
_last_instant: tuple[datetime | None, str] = (None, "")


def instant_text(when: datetime) -> str:
    """`when.isoformat()`, kept for the one instant last asked about: a receipt's message and its
    offers, made one after the other, all occur at the receipt's `issued_at` (the same object),
    and an aware datetime's text asks its time zone for the offset every time (about 1 µs)."""
    global _last_instant
    last = _last_instant  # one read: a (datetime, text) pair always written together
    if last[0] is when:
        return last[1]
    text = when.isoformat()
    _last_instant = (when, text)
    return text


def money(amount: Decimal) -> str:
    return f"{amount:.2f}"


def number(value: Decimal | int) -> int | str:
    """A counter or percentage as JSON: whole numbers as ints, others as exact decimal strings."""
    if isinstance(value, int):
        return value
    return int(value) if value == value.to_integral_value() else str(value.normalize())


def status_change(
    *,
    customer_id: str,
    system_id: str,
    previous: str | None,
    current: str,
    direction: str,
    reason: str,
    effective_from: datetime,
    valid_until: datetime | None,
    counter: str,
    period: str,
    caused_by: str,
    occurred_at: datetime,
    id_parts: tuple[str, ...],
    operator: str | None = None,
    comment: str | None = None,
) -> Output:
    cause = ("status", customer_id, system_id, *id_parts)

    def make() -> dict[str, Any]:
        extra = {k: v for k, v in (("operator", operator), ("comment", comment)) if v is not None}
        return {
            "event_id": event_id(*cause),
            "customer_id": customer_id,
            "status_system": system_id,
            "previous": previous,
            "current": current,
            "direction": direction,
            "reason": reason,
            "effective_from": effective_from.isoformat(),
            "valid_until": valid_until.isoformat() if valid_until else None,
            "counter": counter,
            "period": period,
            "caused_by": caused_by,
            "occurred_at": instant_text(occurred_at),
        } | extra

    return StatusChange(customer_id, make, system_id, direction, reason, "|".join(cause))


def offer_trigger(
    *,
    customer_id: str,
    offer_id: str,
    receipt_id: str | None,
    caused_by: str,
    occurred_at: datetime,
    points: int | None = None,
    expires_at: datetime | None = None,
    percent: Decimal | None = None,
    amount: Decimal | None = None,
) -> Output:
    cause = ("offer", customer_id, offer_id, caused_by)

    def make() -> dict[str, Any]:
        action: dict[str, Any]
        if points is not None:
            expires = expires_at.isoformat() if expires_at else None
            action = {"action": "bonus_points", "points": points, "expires_at": expires}
        else:
            assert percent is not None and amount is not None
            action = {"action": "discount", "percent": number(percent), "amount": money(amount)}
        return {
            "event_id": event_id(*cause),
            "customer_id": customer_id,
            "offer_id": offer_id,
            **action,
            "receipt_id": receipt_id,
            "caused_by": caused_by,
            "occurred_at": instant_text(occurred_at),
        }

    return OfferTrigger(customer_id, make, offer_id, points, "|".join(cause))


def receipt_message(
    *,
    receipt_id: str,
    pos_id: str,
    customer_id: str | None,
    lines: list[str] | LaterLines,
    occurred_at: datetime,
) -> Output:
    """`lines` may be rendered when the value is first read (`LaterLines`)."""
    return ReceiptMessage(receipt_id, pos_id, customer_id, lines, occurred_at)


class LaterLines(Protocol):
    """Receipt lines rendered when first read, from what they will show; until then that can
    be stored as JSON (models/state.py keeps a replay's messages that way)."""

    def __call__(self) -> list[str]: ...

    def to_json(self) -> list[Any]: ...


class StoredLines:
    """Lines read back unrendered from a stored state. Rendering needs the configuration, which
    a stored state does not carry: the rules render them when a resend asks (models/engine.py)."""

    __slots__ = ("data",)

    def __init__(self, data: list[Any]) -> None:
        self.data = data

    def __call__(self) -> list[str]:
        raise RuntimeError("read a stored receipt message without its configuration (models/engine.resent)")

    def to_json(self) -> list[Any]:
        return self.data


class ReceiptMessage(Output):
    """A receipt-message event, its value made when first read from what it was given.

    One object where a closure took seven (the function and a cell for each argument): a
    replay keeps each customer's latest few for a resend, and frees every one before."""

    __slots__ = ("_lines", "customer_id", "occurred_at", "receipt_id")

    def __init__(
        self,
        receipt_id: str,
        pos_id: str,
        customer_id: str | None,
        lines: list[str] | LaterLines,
        occurred_at: datetime,
    ) -> None:
        self.kind, self.key, self._value, self._make = _RECEIPT_MESSAGE, pos_id, None, None
        self.receipt_id, self.customer_id, self._lines, self.occurred_at = receipt_id, customer_id, lines, occurred_at

    @property
    def value(self) -> dict[str, Any]:
        if self._value is None:
            lines, receipt_id = self._lines, self.receipt_id
            self._value = {
                "event_id": event_id("message", receipt_id),
                "receipt_id": receipt_id,
                "pos_id": self.key,
                "customer_id": self.customer_id,
                "lines": lines if isinstance(lines, list) else lines(),
                "caused_by": receipt_id,
                "occurred_at": instant_text(self.occurred_at),
            }
            self._lines = []  # what rendered them, let go
        return self._value

    def unrendered(self) -> list[Any] | None:
        """What its lines are to be rendered from, as JSON, while they are not rendered yet."""
        lines = self._lines
        return None if self._value is not None or isinstance(lines, list) else lines.to_json()

    def stored(self) -> list[Any] | None:
        """What its lines are to be rendered from, if they were read back from a stored state."""
        lines = self._lines
        return lines.data if self._value is None and isinstance(lines, StoredLines) else None


class _Unmade:
    __slots__ = ()
    _READ = "read a receipt message that a replay did not make (apply_receipt(message=False))"

    def __call__(self) -> list[str]:
        raise RuntimeError(self._READ)

    def to_json(self) -> list[Any]:
        raise RuntimeError(self._READ)


#: What a state remembers in place of a receipt message that was not made (`apply_receipt`'s
#: `message`): one shared object, so a receipt costs nothing to remember it by or to let it go.
UNMADE = ReceiptMessage("", "", None, _Unmade(), datetime(1970, 1, 1, tzinfo=UTC))
