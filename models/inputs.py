"""Validated input records, parsed from the bytes producers send.

Every rejection raises `InvalidInput` with a message that names the field and
what was wrong, because that message is what the dead-letter topic shows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Final, NamedTuple

import orjson

from models.errors import InvalidInput
from models.periods import PeriodKind, epoch_of, parse_period
from models.schema import LoyaltyConfig

MAX_RECORD_BYTES = 1_000_000
CENT = Decimal("0.01")
ZERO = Decimal(0)  # shared where a zero is only a starting value: Decimals are immutable


class Receipt(NamedTuple):
    """A sale or return as parsed. Immutable like the other inputs, but a named tuple rather
    than a frozen dataclass: one is made for every receipt, and a frozen dataclass's
    `__init__` makes a call to `object.__setattr__` per field."""

    receipt_id: str
    type: str  # "sale" | "return"
    customer_id: str | None
    card_number: str | None
    pos_id: str
    store_id: str | None
    issued_at: datetime
    currency: str
    total: Decimal
    original_receipt_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClosePeriod:
    command_id: str
    status_system: str
    period: str


@dataclass(frozen=True, slots=True)
class RunCampaigns:
    """Runs the date-triggered campaigns for a local date (the worker sends one each day)."""

    command_id: str
    day: date


@dataclass(frozen=True, slots=True)
class SetStatus:
    """A manual (call centre, CRM, API) or batch (CSV upload) status assignment."""

    command_id: str
    customer_id: str
    status_system: str
    status: str
    valid_until: date | None  # the last local day it holds; None: until the current period ends
    reason: str | None
    operator: str | None
    source: str  # "manual" | "batch"
    requested_at: datetime


CUSTOMER_EVENT_TYPES = (
    "anonymous_registered",
    "card_issued",
    "registered",
    "card_linked",
    "card_blocked",
    "card_unblocked",
    "profile_updated",
    "friend_invited",
    "excluded",
)
CARD_EVENTS = ("card_issued", "card_linked", "card_blocked", "card_unblocked")


@dataclass(frozen=True, slots=True)
class CustomerEvent:
    """A fact about a customer from the CRM, the app or the card office."""

    event_id: str
    type: str
    customer_id: str
    occurred_at: datetime
    card_number: str | None = None
    birth_date: date | None = None
    invitee_id: str | None = None
    channel: str | None = None


#: Nobody born before this is still shopping.
EARLIEST_BIRTH_DATE: Final = date(1900, 1, 1)


def parse_customer_event(raw: bytes | str | None, config: LoyaltyConfig, now: datetime) -> CustomerEvent:
    data = decode_object(raw)
    event_id = _required(data, "event_id")
    kind = data.get("type")
    if kind not in CUSTOMER_EVENT_TYPES:
        raise InvalidInput(f"type: unknown customer event {kind!r}; expected one of {', '.join(CUSTOMER_EVENT_TYPES)}")
    occurred_at = parse_instant(data.get("occurred_at"), "occurred_at")
    if ahead_of_clock(occurred_at, now, config):
        raise InvalidInput(f"occurred_at: {occurred_at.isoformat()} is more than {config.future_tolerance} ahead")
    card_number = _text(data, "card_number", required=kind in CARD_EVENTS)
    invitee_id = _text(data, "invitee_id", required=kind == "friend_invited")
    birth_date = parse_day(data.get("birth_date"), "birth_date", earliest=EARLIEST_BIRTH_DATE)
    if birth_date is not None and birth_date > occurred_at.date():
        raise InvalidInput(f"birth_date: {birth_date.isoformat()} is after occurred_at")
    return CustomerEvent(
        event_id=event_id,
        type=kind,
        customer_id=_not_reserved(_required(data, "customer_id")),
        occurred_at=occurred_at,
        card_number=card_number,
        birth_date=birth_date,
        invitee_id=invitee_id,
        channel=_text(data, "channel"),
    )


def decode_object(raw: bytes | str | None) -> dict[str, Any]:
    """The JSON object of an input record, read strictly (the I-JSON profile, RFC 7493): UTF-8
    without a byte-order mark and nothing else (no encoding is guessed), no lone surrogate
    escapes, no NaN or Infinity, numbers a double can hold, and no object with a name twice
    (parsers disagree on which one wins). Texts are checked for control characters where
    they are read (`_text`)."""
    if raw is None:
        raise InvalidInput("empty value")
    if len(raw) > MAX_RECORD_BYTES:
        raise InvalidInput(f"value of {len(raw)} bytes is larger than the {MAX_RECORD_BYTES}-byte limit")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"not JSON (strict UTF-8, RFC 8259): {_printable(str(exc))}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"expected a JSON object, got {type(value).__name__}")
    if _possibly_repeated(raw, value):
        _refuse_repeated_names(raw)
    return value


#: Deeper than any input needs (a receipt's lines are at depth 2).
MAX_DEPTH = 16
#: A member's name with white space before its colon.
_SPACED_NAME = re.compile(rb'"[ \t\n\r]+:')
_SPACED_NAME_TEXT = re.compile(r'"[ \t\n\r]+:')


def _possibly_repeated(raw: bytes | str, value: dict[str, Any]) -> bool:
    """False when no object in `value` had a name twice in `raw`; True when one may have.

    Every name ends in `":` unless white space precedes its colon, and a text can hold `":`
    only as an escaped quote, so with no spaced name the count of `":` equals the members
    parsed exactly when no name was repeated (and no text holds such a quote). Two C scans
    and a walk of the objects: the exact check parses the record again."""
    if isinstance(raw, bytes):
        ends, spaced = raw.count(b'":'), _SPACED_NAME.search(raw) is not None
    else:
        ends, spaced = raw.count('":'), _SPACED_NAME_TEXT.search(raw) is not None
    return spaced or ends != _members(value, 0)


def _members(value: dict[str, Any] | list[Any], depth: int) -> int:
    """How many members the objects in `value` have, nested ones included."""
    if depth > MAX_DEPTH:
        raise InvalidInput(f"nested more than {MAX_DEPTH} levels deep")
    items: Iterable[Any] = value.values() if type(value) is dict else value
    count = len(value) if type(value) is dict else 0
    for item in items:
        if type(item) is dict or type(item) is list:
            count += _members(item, depth + 1)
    return count


def _refuse_repeated_names(raw: bytes | str) -> None:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            repeated = next(name for name in names if names.count(name) > 1)
            raise InvalidInput(f"{_printable(repeated)}: appears more than once in one object")
        return dict(pairs)

    json.loads(raw, object_pairs_hook=unique)


def _exactly(raw: bytes | str) -> Any:
    """A record `decode_object` accepted, read again with every number with a fraction as Decimal."""
    try:
        return json.loads(raw, parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise InvalidInput(f"not JSON: {exc}") from None


def _money_as_float(data: dict[str, Any]) -> bool:
    """Whether a receipt's amounts came as JSON numbers with a fraction (read as binary floats)."""
    if isinstance(data.get("total"), float):
        return True
    lines = data.get("lines")
    return isinstance(lines, list) and any(
        isinstance(line, dict) and (isinstance(line.get("price"), float) or isinstance(line.get("qty"), float))
        for line in lines
    )


def _receipt_object(raw: bytes | str | None) -> dict[str, Any]:
    """A receipt's JSON object, its amounts never binary floats."""
    data = decode_object(raw)
    if _money_as_float(data):
        assert raw is not None
        data = _exactly(raw)  # read again with every fraction as Decimal
    return data


class _BinaryFloat(Exception):
    """An amount came as a JSON number with a fraction, which orjson reads as a binary float."""


def parse_receipt(raw: bytes | str | None, config: LoyaltyConfig, now: datetime) -> Receipt:
    return receipt_from_object(decode_object(raw), raw, config, now)


def receipt_from_object(
    data: dict[str, Any], raw: bytes | str | None, config: LoyaltyConfig, now: datetime | float
) -> Receipt:
    """`parse_receipt` of a record already decoded (`data`, read by `decode_object` from `raw`);
    `now` may also be given as epoch seconds, as a broker's timestamp gives it (`ahead_of_clock`)."""
    try:
        return _receipt_from(data, config, now)
    except _BinaryFloat:
        # Read again with every fraction as Decimal. Found while parsing rather than by a scan
        # before it: nearly every producer sends amounts as strings, so a scan would be paid for nothing.
        assert raw is not None
        return _receipt_from(_exactly(raw), config, now)


def _receipt_from(data: dict[str, Any], config: LoyaltyConfig, now: datetime | float) -> Receipt:
    receipt_id = _required(data, "receipt_id")
    kind = data.get("type", "sale")
    if kind not in ("sale", "return"):
        raise InvalidInput(f"type: must be 'sale' or 'return', got {kind!r}")
    customer_id = _text(data, "customer_id")
    if customer_id is not None:
        _not_reserved(customer_id)
    card_number = _text(data, "card_number")
    if customer_id is None and card_number is None:
        raise InvalidInput("customer_id, card_number: at least one is required (an anonymous purchase sends its card)")
    pos_id = _required(data, "pos_id")
    issued_at = parse_instant(data.get("issued_at"), "issued_at")
    if ahead_of_clock(issued_at, now, config):
        raise InvalidInput(
            f"issued_at: {issued_at.isoformat()} is more than {config.future_tolerance} ahead of the clock"
        )
    currency = data.get("currency")
    if currency != config.currency:
        raise InvalidInput(f"currency: {currency!r} is not the programme's currency {config.currency!r}")
    total = parse_money(data.get("total"), "total")
    lines = data.get("lines")
    if lines is not None:
        _check_lines(lines, total)
    original = _text(data, "original_receipt_id", required=kind == "return")
    if kind == "return" and total == 0:
        raise InvalidInput("total: a return must return a positive amount")
    store_id = _text(data, "store_id")
    # By position: a named tuple made with keywords costs twice as much.
    return Receipt(receipt_id, kind, customer_id, card_number, pos_id, store_id, issued_at, currency, total, original)


def ahead_of_clock(at: datetime, now: datetime | float, config: LoyaltyConfig) -> bool:
    """Whether an input dated `at` is further ahead of the clock (`now`, a datetime or epoch
    seconds) than `future_tolerance` allows: such a receipt or customer event is refused.

    A replay has each receipt's arrival as epoch seconds, and making a datetime of each is
    dear: nearly every receipt is far behind the tolerance, which
    epoch seconds tell at once (a second's margin is far beyond their rounding). Only a
    receipt within that second of the limit is compared as datetimes, exactly as the worker
    compares it."""
    if not isinstance(now, datetime):
        if epoch_of(at) - now < config.future_tolerance_seconds - 1.0:
            return False
        now = datetime.fromtimestamp(now, UTC)
    return at - now > config.future_tolerance


def validated_receipt(raw: bytes | str) -> Receipt:
    """A receipt `parse_receipt` has already accepted (the loyalty agent's copy, forwarded by the
    ingest agent): read again, not judged again, so it gives the same `Receipt` at a fraction of
    the cost."""
    data = _receipt_object(raw)
    return Receipt(
        receipt_id=data["receipt_id"],
        type=data.get("type", "sale"),
        customer_id=data.get("customer_id") or None,
        card_number=data.get("card_number") or None,
        pos_id=data["pos_id"],
        store_id=data.get("store_id") or None,
        issued_at=datetime.fromisoformat(data["issued_at"]),
        currency=data["currency"],
        total=Decimal(data["total"]),
        original_receipt_id=data.get("original_receipt_id") or None,
    )


def parse_command(
    raw: bytes | str | None, config: LoyaltyConfig, received_at: datetime
) -> ClosePeriod | SetStatus | RunCampaigns:
    """Parses a status command; `received_at` (the record's log timestamp) dates a command that has no
    `requested_at`, so processing it again gives the same result."""
    data = decode_object(raw)
    command_id = _required(data, "command_id")
    kind = data.get("type")
    if kind not in ("close_period", "set_status", "run_campaigns"):
        raise InvalidInput(f"type: unknown command {kind!r}; expected close_period, set_status or run_campaigns")
    if kind == "run_campaigns":
        day = parse_day(data.get("date"), "date")
        if day is None:
            raise InvalidInput("date: required")
        return RunCampaigns(command_id=command_id, day=day)
    system_id = _required(data, "status_system")
    try:
        system = config.system(system_id)
    except KeyError:
        raise InvalidInput(f"status_system: unknown status system {system_id!r}") from None
    if kind == "close_period":
        period = _required(data, "period")
        first = parse_period(PeriodKind(system.period), period).first_day
        if not EARLIEST_DAY <= first < LATEST.date():
            raise InvalidInput(f"period: {period} is not between {EARLIEST.year} and {LATEST.year}")
        return ClosePeriod(command_id=command_id, status_system=system_id, period=period)
    status = _required(data, "status")
    if status not in {level.id for level in system.levels}:
        known = ", ".join(level.id for level in system.levels)
        raise InvalidInput(f"status: {status!r} is not a level of {system_id!r} ({known})")
    source = data.get("source", "manual")
    if source not in ("manual", "batch"):
        raise InvalidInput(f"source: must be 'manual' or 'batch', got {source!r}")
    requested = data.get("requested_at")
    return SetStatus(
        command_id=command_id,
        customer_id=_not_reserved(_required(data, "customer_id")),
        status_system=system_id,
        status=status,
        valid_until=parse_day(data.get("valid_until"), "valid_until"),
        reason=_text(data, "reason"),
        operator=_text(data, "operator"),
        source=source,
        requested_at=parse_instant(requested, "requested_at") if requested is not None else received_at,
    )


#: The instants an input may carry: a receipt, event or command dated outside these is a
#: producer's error (and its period would be out of the calendar's range).
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)
EARLIEST_DAY: Final = EARLIEST.date()
_DAY_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def parse_day(value: Any, field: str, earliest: date = EARLIEST_DAY) -> date | None:
    """A calendar day written exactly as YYYY-MM-DD (nothing after it), from `earliest` to `LATEST`."""
    if value is None or value == "":
        return None
    if type(value) is not str or _DAY_TEXT.match(value) is None:
        raise InvalidInput(f"{field}: must be a date like 2026-12-31, got {_shown(value)}")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{field}: {value} is not a date of the calendar") from None
    if not earliest <= day < LATEST.date():
        raise InvalidInput(f"{field}: {value} is not between {earliest} and {LATEST.date()}")
    return day


def parse_instant(value: Any, field: str) -> datetime:
    if type(value) is not str or not (value.isascii() and value.isprintable()):
        # (fromisoformat reads up to a NUL and ignores the rest)
        raise InvalidInput(f"{field}: must be an ISO-8601 timestamp with offset, got {_shown(value)}")
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{field}: {_shown(value)} is not an ISO-8601 timestamp") from None
    if instant.tzinfo is None:  # fromisoformat gives a fixed offset or none, never a zone without one
        raise InvalidInput(f"{field}: {_shown(value)} has no UTC offset; send e.g. {_printable(value)}+01:00")
    if EARLIEST.year < instant.year < LATEST.year - 1:  # nearly every instant: no offset can move it out
        return instant
    try:
        within = EARLIEST <= instant < LATEST
    except OverflowError:  # its offset takes it past the first or last day of the calendar
        within = False
    if not within:
        raise InvalidInput(f"{field}: {value} is not between {EARLIEST.isoformat()} and {LATEST.isoformat()}")
    return instant


# Tuples, not `str | int | Decimal`: a union in isinstance is built again on every call.
_MONEY_TYPES = (str, int, Decimal)
_QUANTITY_TYPES = (int, Decimal)
#: No receipt is worth this much; it also keeps every amount within Decimal's 28 digits.
MAX_AMOUNT = Decimal(10**12)
#: No line sells more; with at most `QUANTITY_PLACES` places a line's amount stays exact.
MAX_QUANTITY = 1_000_000
QUANTITY_PLACES = 6
#: An amount as text: ASCII digits with an optional fraction (Decimal alone also reads
#: " 12.5", "1_000", "1e3" and digits of other scripts).
_AMOUNT_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?\Z")


#: Amounts already read, by their text: a catalogue's prices and the usual totals recur, and a
#: lookup is far cheaper than reading and checking one again. Filled up to `_MONEY_CACHE` texts.
_money: dict[str, Decimal] = {}
_MONEY_CACHE = 1 << 16


def parse_money(value: Any, field: str) -> Decimal:
    if type(value) is str:  # nearly every amount: "12.50"
        known = _money.get(value)
        if known is not None:
            return known
        if _AMOUNT_TEXT.match(value) is None:
            raise InvalidInput(f'{field}: {_shown(value)} is not a decimal amount like "12.50"')
        amount = Decimal(value)
        if 0 <= amount < MAX_AMOUNT and amount == amount.quantize(CENT):
            if len(_money) < _MONEY_CACHE:
                _money[value] = amount  # a Decimal is immutable: one may be shared
            return amount
    if type(value) is float:
        raise _BinaryFloat
    if isinstance(value, bool) or not isinstance(value, _MONEY_TYPES):
        raise InvalidInput(f'{field}: must be a decimal amount like "12.50", got {_shown(value)}')
    amount = Decimal(value)
    if not amount.is_finite():
        raise InvalidInput(f"{field}: {_shown(value)} is not a finite amount")
    if amount < 0:
        raise InvalidInput(f"{field}: {value} is negative; send a return with original_receipt_id instead")
    if amount >= MAX_AMOUNT:
        raise InvalidInput(f"{field}: {value} is not below {MAX_AMOUNT:,}, the largest amount a receipt may carry")
    if amount != amount.quantize(CENT):
        raise InvalidInput(f"{field}: {value} has more than two decimal places")
    return amount


def _check_quantity(qty: Any, index: int) -> None:
    if isinstance(qty, bool) or not isinstance(qty, _QUANTITY_TYPES):
        raise InvalidInput(f"lines[{index}].qty: must be a positive number, got {_shown(qty)}")
    exponent = qty.as_tuple().exponent if isinstance(qty, Decimal) else 0
    if not isinstance(exponent, int) or exponent < -QUANTITY_PLACES:  # a letter: NaN or Infinity
        raise InvalidInput(f"lines[{index}].qty: {_shown(qty)} has more than {QUANTITY_PLACES} decimal places")
    if not 0 < qty <= MAX_QUANTITY:
        raise InvalidInput(f"lines[{index}].qty: must be a positive number up to {MAX_QUANTITY:,}, got {_shown(qty)}")


def _check_lines(lines: Any, total: Decimal) -> None:
    if not isinstance(lines, list):
        raise InvalidInput("lines: must be a list")
    sum_of_lines = ZERO
    for index, line in enumerate(lines):
        if not isinstance(line, dict):
            raise InvalidInput(f"lines[{index}]: must be an object")
        qty = line.get("qty", 1)
        if type(qty) is not int or not 0 < qty <= MAX_QUANTITY:  # nearly every line: a whole number
            if type(qty) is float:
                raise _BinaryFloat
            _check_quantity(qty, index)
        price = line.get("price")
        # The amount cache read here first: a call to parse_money for a price it already knows
        # cost more than the lookup itself, for every line of every receipt.
        known = _money.get(price) if type(price) is str else None
        if known is None:
            try:
                known = parse_money(price, "price")
            except InvalidInput as exc:  # the line's place named only when it is wrong
                raise InvalidInput(f"lines[{index}].{exc}") from None
        price = known
        sum_of_lines += price if qty == 1 else qty * price
    # Equal as they are, they are equal to the cent; quantized only to tell (and show) a difference.
    if sum_of_lines != total and sum_of_lines.quantize(CENT) != total:
        raise InvalidInput(f"lines: add up to {sum_of_lines.quantize(CENT)}, but total is {total}")


# Card records, each partition's close frontier and the receipt store (models/processor.py) share
# the customers table under these prefixes.
CARD_KEY_PREFIX: Final = "card:"
PARTITION_KEY_PREFIX: Final = "partition:"
RECEIPT_KEY_PREFIX: Final = "rid:"
RESERVED_PREFIXES = (CARD_KEY_PREFIX, PARTITION_KEY_PREFIX, RECEIPT_KEY_PREFIX)


def receipt_key(customer_id: str, receipt_id: str) -> str:
    """The table key of a receipt a customer's state let go of: `rid:{n}:{customer id}{receipt id}`,
    n the customer id's length in UTF-8 bytes, so it stays on its customer's partition
    (`customer_of_receipt_key`) whatever either id holds."""
    return f"{RECEIPT_KEY_PREFIX}{len(customer_id.encode())}:{customer_id}{receipt_id}"


def customer_of_receipt_key(key: bytes) -> bytes:
    """The customer id (UTF-8) that a `receipt_key` belongs to."""
    start = len(RECEIPT_KEY_PREFIX)
    colon = key.index(b":", start)
    length = int(key[start:colon])
    return key[colon + 1 : colon + 1 + length]


def _not_reserved(value: str) -> str:
    # A text known as such, each prefix on its own: compiled, `startswith` is then a C call,
    # where of a value typed by a TypeVar it is a method looked up and called.
    if (
        value.startswith(CARD_KEY_PREFIX)
        or value.startswith(PARTITION_KEY_PREFIX)
        or value.startswith(RECEIPT_KEY_PREFIX)
    ):
        prefix = next(p for p in RESERVED_PREFIXES if value.startswith(p))
        raise InvalidInput(f"customer_id: may not start with {prefix!r}, got {value!r}")
    return value


def _required(data: dict[str, Any], field: str) -> str:
    value = _text(data, field, required=True)
    assert value is not None
    return value


def _text(data: dict[str, Any], field: str, *, required: bool = False) -> str | None:
    value = data.get(field)
    if type(value) is str and 0 < len(value) <= MAX_TEXT and value.isprintable():
        return value  # nearly every field: one test, not four
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{field}: required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: must be a string, got {_printable(repr(value)[:80])}")
    if len(value) > MAX_TEXT:
        raise InvalidInput(f"{field}: longer than {MAX_TEXT} characters")
    bad = _FORBIDDEN.search(value)
    if bad is not None:
        raise InvalidInput(
            f"{field}: contains U+{ord(bad.group()):04X} (a control character or a lone surrogate) "
            f"at position {bad.start()}"
        )
    return value  # printable but for spaces other than U+0020 or format characters: allowed


MAX_TEXT = 200
#: What no id or text may hold: C0 and C1 control characters (NUL, BEL, ESC, ...), DEL, and
#: surrogates (a lone one cannot be encoded as UTF-8, so no output could carry it).
_FORBIDDEN = re.compile("[\\x00-\\x1f\\x7f-\\x9f" + chr(0xD800) + "-" + chr(0xDFFF) + "]")


def _shown(value: Any) -> str:
    """A value as a message shows it: its repr, escaped, at most 80 characters."""
    text = repr(value)
    return _printable(text if len(text) <= 80 else text[:77] + "...")


def _printable(text: str) -> str:
    """`text` with anything unprintable escaped, for a message a person reads."""
    return text if text.isprintable() else text.encode("unicode_escape", "backslashreplace").decode("ascii")
