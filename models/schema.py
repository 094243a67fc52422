"""The typed, frozen form of `loyalty.yaml`.

Every rule the core applies is read from these objects; nothing below `models/`
sees YAML. Validation problems carry the path of the offending field, e.g.
`status_systems[1].levels[2].above: must be greater than 200`.
"""

from __future__ import annotations

import enum
import functools
import math
import re
import string
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)

from models.periods import PeriodKind

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_SLUG = r"^[a-z][a-z0-9_]*$"


def _parse_duration(value: Any) -> Any:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError("must be a duration like 30s, 5m, 1h or 2d")
        return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


def _parse_zone(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
    return value


def _exact_decimal(value: Any) -> Any:
    # YAML hands us floats for `above: 100.5`; go through str so 100.5 stays 100.5.
    if isinstance(value, float):
        return Decimal(str(value))
    return value


Duration = Annotated[timedelta, BeforeValidator(_parse_duration)]
Zone = Annotated[ZoneInfo, BeforeValidator(_parse_zone), PlainSerializer(str)]
Amount = Annotated[Decimal, BeforeValidator(_exact_decimal), Field(ge=0)]
Percent = Annotated[Decimal, BeforeValidator(_exact_decimal), Field(ge=0, le=100)]
Slug = Annotated[str, Field(pattern=_SLUG, max_length=64)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class CounterKind(enum.StrEnum):
    PURCHASE_AMOUNT = "purchase_amount"
    PURCHASE_COUNT = "purchase_count"
    FRIENDS_INVITED = "friends_invited"
    VISIT_DAYS = "visit_days"


class DowngradePolicy(enum.StrEnum):
    RECOMPUTE = "recompute"
    ONE_STEP = "one_step"
    NEVER = "never"


class ClientState(enum.StrEnum):
    ANONYMOUS = "anonymous"
    NEW = "new"
    REGISTERED = "registered"
    DELETED = "deleted"
    EXCLUDED = "excluded"


class Privileges(BaseModel):
    """What a level gives; `discount_percent` feeds status discounts and receipt lines.

    Other keys (favorite_products, free_delivery, ...) are kept as given and are
    available to receipt-message templates under their own names.
    """

    model_config = ConfigDict(frozen=True, extra="allow")
    discount_percent: Percent = Decimal(0)

    @model_validator(mode="before")
    @classmethod
    def _plain_values(cls, data: Any) -> Any:
        """Each other privilege is text, a whole number, a decimal or true/false: what a receipt
        line and a snapshot can show. A fraction is kept as the decimal it is written as."""
        if not isinstance(data, dict):
            return data
        problems: list[str] = []
        plain: dict[Any, Any] = {}
        for key, value in data.items():
            if key == "discount_percent":  # a Percent field of its own
                pass
            elif isinstance(value, float):
                if not math.isfinite(value):
                    problems.append(f"{key}: must be a finite number, got {value}")
                value = Decimal(str(value))
            elif not isinstance(value, str | int | Decimal):
                got = "nothing" if value is None else type(value).__name__
                problems.append(f"{key}: must be text, a number or true/false, got {got}")
            plain[key] = value
        if problems:
            raise ValueError("\n".join(problems))
        return plain


class Level(Frozen):
    id: Slug
    name: str = Field(min_length=1)
    above: Amount | None = None
    privileges: Privileges = Privileges()


class InstantCondition(Frozen):
    single_purchase_above: Amount


class InstantUpgrade(Frozen):
    id: Slug
    when: InstantCondition
    to: str
    until: Literal["period_end"] = "period_end"


class StatusSystem(Frozen):
    id: Slug
    name: str = Field(min_length=1)
    counter: CounterKind
    period: PeriodKind
    downgrade: DowngradePolicy = DowngradePolicy.RECOMPUTE
    levels: tuple[Level, ...] = Field(min_length=1)
    instant_upgrades: tuple[InstantUpgrade, ...] = ()
    #: This many days before a period ends, a customer whose counter would lower the level
    #: gets an `at_risk` notice (and `when: at_risk` receipt lines). None: no notices.
    at_risk_days: Annotated[int, Field(ge=1, le=366)] | None = None

    @model_validator(mode="after")
    def _levels_ascend(self) -> StatusSystem:
        problems: list[str] = []
        seen: set[str] = set()
        previous: Decimal | None = None
        for index, level in enumerate(self.levels):
            where = f"levels[{index}]"
            if level.id in seen:
                problems.append(f"{where}.id: duplicate level id {level.id!r}")
            seen.add(level.id)
            if index == 0:
                if level.above is not None:
                    problems.append(f"{where}.above: the first level is where customers start and has no threshold")
                continue
            if level.above is None:
                problems.append(f"{where}.above: required for every level but the first")
            elif previous is not None and level.above <= previous:
                problems.append(f"{where}.above: must be greater than {previous}")
            if level.above is not None:
                previous = level.above
        if self.counter is not CounterKind.PURCHASE_AMOUNT:
            for index, level in enumerate(self.levels):
                if level.above is not None and level.above != level.above.to_integral_value():
                    problems.append(f"levels[{index}].above: a {self.counter.value} counter needs a whole number")
        for index, rule in enumerate(self.instant_upgrades):
            if rule.to not in seen:
                problems.append(f"instant_upgrades[{index}].to: unknown level {rule.to!r}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @functools.cached_property
    def thresholds(self) -> tuple[Decimal, ...]:
        """The `above` of every level but the first, ascending (validated)."""
        return tuple(level.above for level in self.levels[1:] if level.above is not None)

    @functools.cached_property
    def ranks(self) -> dict[str, int]:
        """Each level's place, lowest first (KeyError for an unknown id). A dict rather than a
        method: a method of this class runs as Python, and a call to it from the compiled core
        is dear."""
        return {level.id: index for index, level in enumerate(self.levels)}

    def level(self, level_id: str) -> Level:
        return self.levels[self.ranks[level_id]]


PerLevel = dict[str, Annotated[int, Field(ge=0)]] | Annotated[int, Field(ge=0)]
PerLevelPercent = dict[str, Percent] | Percent


class OfferAction(Frozen):
    """Exactly one of `bonus_points` and `discount_percent`.

    Either may be one value for everybody or a mapping from level id to value;
    a level missing from the mapping gets nothing.
    """

    bonus_points: PerLevel | None = None
    discount_percent: PerLevelPercent | None = None
    expires_in_days: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _one_action(self) -> OfferAction:
        if (self.bonus_points is None) == (self.discount_percent is None):
            raise ValueError("give exactly one of bonus_points and discount_percent")
        return self


class Segment(Frozen):
    days_since_registration_at_least: Annotated[int, Field(ge=0)] | None = None
    client_states: tuple[ClientState, ...] | None = None
    status: dict[str, str] | None = None
    purchases_in_period_at_least: Annotated[int, Field(ge=0)] | None = None


class Offer(Frozen):
    """A purchase offer (every n-th purchase, or every purchase: a status discount) or a dated campaign."""

    id: Slug
    status_system: str | None = None
    every_nth_purchase: Annotated[int, Field(ge=1)] | None = None
    trigger: Literal["purchase", "birthday"] = "purchase"
    segment: Segment | None = None
    action: OfferAction
    client_states: tuple[ClientState, ...] | None = None


class MessageWhen(enum.StrEnum):
    PURCHASE = "purchase"  # every receipt of an identified customer, once per status system
    STATUS_CHANGED = "status_changed"  # once per status change the receipt caused
    STATUS_UPGRADED = "status_upgraded"
    STATUS_DOWNGRADED = "status_downgraded"
    ANONYMOUS = "anonymous"  # receipts that count for no one
    AT_RISK = "at_risk"  # within the system's at_risk_days of the period end, when the level would drop


class MessageUnless(enum.StrEnum):
    TOP_LEVEL = "top_level"


#: The metavariables a receipt-message template may use; docs/configuration.md documents each one.
TEMPLATE_VARIABLES = frozenset(
    {
        "status_name",
        "status_id",
        "previous_status_name",
        "system_name",
        "discount_percent",
        "counter",
        "remaining",
        "keep_remaining",
        "keep_by",
        "next_status_name",
        "next_level_threshold",
        "currency",
        "period_name",
        "period_end",
        "days_left",
        "next_period_name",
        "purchase_count",
        "purchase_amount",
        "receipt_total",
        "customer_id",
        "store_id",
    }
)


class ReceiptMessage(Frozen):
    when: MessageWhen
    text: str = Field(min_length=1)
    unless: MessageUnless | None = None
    status_system: str | None = None

    @field_validator("text")
    @classmethod
    def _known_variables(cls, text: str) -> str:
        try:
            list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(f"broken template: {exc}") from exc
        return text

    @property
    def variables(self) -> set[str]:
        """The metavariables the template names."""
        return {name for _, name, _, _ in string.Formatter().parse(self.text) if name is not None}


class Topics(Frozen):
    receipts: str = "receipts"
    customer_events: str = "customer-events"
    status_commands: str = "status-commands"
    status_changes: str = "status-changes"
    offer_triggers: str = "offer-triggers"
    receipt_messages: str = "receipt-messages"
    dead_letters: str = "dead-letters"
    customer_status: str = "customer-status"  # compacted: the latest snapshot per customer


class LoyaltyConfig(Frozen):
    timezone: Zone
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    period_close_grace: Duration = timedelta(hours=1)
    idle_close_after: Duration = timedelta(minutes=5)
    #: A receipt dated further ahead of the wall clock than this is refused.
    future_tolerance: Duration = timedelta(days=1)
    #: How many of a customer's latest receipts keep their output events, so a resent
    #: receipt yields the very same events again. Older resends still count once.
    replay_memory: Annotated[int, Field(ge=1, le=100)] = 3
    #: How long receipt ids are remembered for de-duplication, counted back from the
    #: customer's latest receipt; a receipt older than that is refused as too old.
    dedupe_window: Duration = timedelta(days=62)
    #: At most this many receipts are remembered per customer (the oldest go first);
    #: it bounds the state written to the changelog for every receipt.
    receipt_memory: Annotated[int, Field(ge=10)] = 400
    topics: Topics = Topics()
    status_systems: tuple[StatusSystem, ...] = Field(min_length=1)
    offers: tuple[Offer, ...] = ()
    receipt_messages: tuple[ReceiptMessage, ...] = ()

    @field_validator("receipt_messages")
    @classmethod
    def _known_variables(cls, messages: tuple[ReceiptMessage, ...], info: ValidationInfo) -> tuple[ReceiptMessage, ...]:
        # A field validator, not a model one, so that its problems are listed with every other
        # field's. A level's privileges are metavariables too, under their own names.
        systems: tuple[StatusSystem, ...] | None = info.data.get("status_systems")
        known = set(TEMPLATE_VARIABLES)
        if systems is not None:
            known |= {name for system in systems for level in system.levels for name, _ in level.privileges}
        problems = []
        for index, message in enumerate(messages):
            unknown = sorted(message.variables - known)
            if unknown:
                problem = (
                    f"[{index}].text: unknown metavariable(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
                )
                if systems is None:
                    problem += " (and any level's privileges: the status systems have problems of their own)"
                problems.append(problem)
        if problems:
            raise ValueError("\n".join(problems))
        return messages

    @model_validator(mode="after")
    def _references(self) -> LoyaltyConfig:
        problems: list[str] = []
        systems = {s.id: s for s in self.status_systems}
        seen: set[str] = set()
        for index, system in enumerate(self.status_systems):
            if system.id in seen:
                problems.append(f"status_systems[{index}].id: duplicate status system id {system.id!r}")
            seen.add(system.id)
        offer_ids: set[str] = set()
        for index, offer in enumerate(self.offers):
            where = f"offers[{index}]"
            if offer.id in offer_ids:
                problems.append(f"{where}.id: duplicate offer id {offer.id!r}")
            offer_ids.add(offer.id)
            if offer.trigger == "purchase":
                if offer.status_system is None:
                    problems.append(f"{where}.status_system: a purchase offer needs the status system it counts in")
                    continue
                counted_in = systems.get(offer.status_system)
                if counted_in is None:
                    problems.append(f"{where}.status_system: unknown status system {offer.status_system!r}")
                    continue
                for field in ("bonus_points", "discount_percent"):
                    value = getattr(offer.action, field)
                    if isinstance(value, dict):
                        for level_id in value:
                            if level_id not in {lv.id for lv in counted_in.levels}:
                                problems.append(f"{where}.action.{field}.{level_id}: not a level of {counted_in.id!r}")
            elif offer.every_nth_purchase is not None:
                problems.append(f"{where}.every_nth_purchase: only for purchase offers")
        for index, message in enumerate(self.receipt_messages):
            if message.status_system is not None and message.status_system not in systems:
                problems.append(
                    f"receipt_messages[{index}].status_system: unknown status system {message.status_system!r}"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @functools.cached_property
    def dedupe_seconds(self) -> float:
        """`dedupe_window` in seconds: the engine compares it with every receipt's time."""
        return self.dedupe_window.total_seconds()

    @functools.cached_property
    def future_tolerance_seconds(self) -> float:
        """`future_tolerance` in seconds: a replay compares it with every receipt's time."""
        return self.future_tolerance.total_seconds()

    def system(self, system_id: str) -> StatusSystem:
        for system in self.status_systems:
            if system.id == system_id:
                return system
        raise KeyError(system_id)
