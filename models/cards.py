"""Loyalty cards: who owns a card number, and what a card event changes.

Card events and receipts that carry only a card number are keyed by the card, so
they meet the card's record on one partition; what concerns a customer is then
handed on to the customer's partition as a `Route`.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from models.errors import InvalidInput
from models.inputs import CARD_KEY_PREFIX, CustomerEvent

__all__ = [
    "CARD_KEY_PREFIX",
    "CardResult",
    "CardState",
    "Route",
    "apply_card_event",
    "card_key",
    "owner_of",
    "record_card_event",
    "release",
]


def card_key(card_number: str) -> str:
    """The table key (and partitioning key) of a card's record; never a customer id."""
    return CARD_KEY_PREFIX + card_number


@dataclass(slots=True)
class CardState:
    number: str
    owner: str
    temporary: bool  # owned by the New customer created when the card was issued
    blocked: bool = False
    events: tuple[str, ...] = ()  # the latest event ids applied, so a resent one applies once

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"card": self.number, "o": self.owner, "t": self.temporary, "b": self.blocked, "e": list(self.events)}
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> CardState:
        data = orjson.loads(raw)
        return cls(data["card"], data["o"], data["t"], data["b"], tuple(data["e"]))


@dataclass(frozen=True, slots=True)
class Route:
    """Something a card event asks of a customer's partition."""

    kind: str  # "customer_event": apply the event there; "merge_away": hand the temporary owner's state over
    customer_id: str
    into: str | None = None  # merge_away: the member who takes the counters


@dataclass(slots=True)
class CardResult:
    card: CardState | None
    routes: list[Route]
    duplicate: bool = False


EVENT_MEMORY = 10


def apply_card_event(card: CardState | None, event: CustomerEvent) -> CardResult:
    """`card_issued` makes `customer_id` the card's temporary (New) owner; `card_linked` moves the
    card to the member `customer_id` and merges the temporary owner into them; blocking stops
    the card from resolving receipts (they become anonymous) and from being linked."""
    number = event.card_number
    assert number is not None
    if card is not None and event.event_id in card.events:
        return CardResult(card, [], duplicate=True)
    routes: list[Route] = []
    if event.type == "card_issued":
        if card is not None:
            raise InvalidInput(f"card_number: card {number} was already issued (to {card.owner})")
        card = CardState(number=number, owner=event.customer_id, temporary=True)
        routes.append(Route("customer_event", event.customer_id))
    elif card is None:
        raise InvalidInput(f"card_number: card {number} was never issued")
    elif event.type == "card_linked":
        if card.blocked:
            raise InvalidInput(f"card_number: card {number} is blocked and cannot be linked")
        if not card.temporary and card.owner != event.customer_id:
            raise InvalidInput(f"card_number: card {number} already belongs to member {card.owner}")
        previous = card.owner
        card.owner, card.temporary = event.customer_id, False
        routes.append(Route("customer_event", event.customer_id))
        if previous != event.customer_id:
            routes.append(Route("merge_away", previous, into=event.customer_id))
    elif event.type in ("card_blocked", "card_unblocked"):
        card.blocked = event.type == "card_blocked"
    else:
        raise InvalidInput(f"type: {event.type} is not a card event")
    card.events = (*card.events[-(EVENT_MEMORY - 1) :], event.event_id)
    return CardResult(card, routes)


def record_card_event(cards: dict[str, CardState], event: CustomerEvent) -> CardResult | None:
    """`apply_card_event` to the card it names in `cards`, kept there; None for a resend, which
    changes nothing. Raises `InvalidInput` as `apply_card_event` does."""
    assert event.card_number is not None
    result = apply_card_event(cards.get(event.card_number), event)
    if result.duplicate or result.card is None:
        return None
    cards[event.card_number] = result.card
    return result


def owner_of(card: CardState | None) -> str | None:
    """Whom a receipt with this card counts for; None makes it anonymous (unknown or blocked card)."""
    if card is None or card.blocked:
        return None
    return card.owner


def release(card: CardState | None, customer_id: str) -> bool:
    """Whether the card's record goes on the owner's exclusion: only if it still names them."""
    return card is not None and card.owner == customer_id
