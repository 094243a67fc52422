"""A customer's state: one value per customer, so the changelog gets one record per changed
customer per commit.

The JSON form is compact on purpose: it is written to the changelog whenever the
customer changes, and a replay writes one for every customer it rebuilds. A key that
would hold its default is left out. The keys:

Customer (`CustomerState.to_bytes`):

    key    holds
    id     customer id
    cs     client state (`anonymous`, `new`, `registered`, `deleted`, `excluded`)
    sys    status system id -> that system's standing (keys below)
    rc     the remembered receipts, oldest first, each a list (below)
    ro     receipt id -> the receipt-message event kept for a resend, rendered
    rl     receipt id -> [pos id, customer id, occurred_at, what the lines are rendered
           from]: a kept message not rendered yet (a replay's)
    lt     epoch seconds of the newest receipt counted
    fb     epoch seconds up to which receipts were forgotten (older ones are refused)
    v      version: changes made so far; orders the customer-status snapshots
    lc     [input id, event time] of the latest change
    cm     the latest command and customer-event ids applied (a resend applies once)
    bd     birth date (personal data: erased on exclusion)
    ra     when the customer registered, ISO instant (personal data)
    cards  card numbers the customer owns (personal data)
    mi     a Deleted temporary owner: the member it was merged into
    gr     "offer:date" of the latest campaign grants (a date run again grants nothing)
    nw     [system, previous, current, direction] of changes made between receipts,
           announced on the next receipt's message

Standing in one status system (`SystemState.to_json`):

    key    holds
    l      level in force now
    b      level earned at the last close: where the next close starts from
    p      the open period's id (e.g. `2026-11`)
    a      the open period's purchase amount (a decimal string)
    c      the open period's purchase count
    r      why `l` is in force (`initial`, `period_close`, `instant_rule`, `manual`, ...)
    v      valid until, ISO instant: set while `l` is temporary (instant or manual)
    cp     the last closed period's id
    ca     its amount
    cc     its purchase count
    cb     the earned level its close started from
    pk     the highest purchase count the open period reached (returns lower `c`)
    f      friends invited in the open period
    d      local days (ordinals) with a purchase in the open period
    cf     friends invited in the last closed period
    cd     days with a purchase in the last closed period
    is     level -> sales of the open period that stand for an instant upgrade to it

A remembered receipt (`ReceiptRecord.to_json`) is `[receipt id, issued at (epoch
seconds), total]`, followed by `returned` and the `[system, level]` pairs of the
instant rules it met when either is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from models.events import Output, OutputKind, ReceiptMessage, StoredLines
from models.inputs import ZERO
from models.schema import ClientState

#: Client states of customers outside the programme: their purchases count for no one, they have
#: no statuses to show, and campaigns and status changes pass them by.
OUTSIDE_PROGRAMME = frozenset({ClientState.DELETED, ClientState.EXCLUDED})


def iso(at: datetime | None) -> str:
    """An instant's ISO text; "" for none (a state that nothing has changed yet)."""
    return at.isoformat() if at is not None else ""


@dataclass(slots=True)
class SystemState:
    """A customer's standing in one status system."""

    level: str  # in force now
    base_level: str  # earned at the last period close; where the next close starts from
    period: str  # the open period's id
    amount: Decimal
    count: int
    reason: str  # why `level` is in force
    valid_until: str | None  # ISO instant; set while `level` is a temporary one
    closed_period: str | None
    closed_amount: Decimal
    closed_count: int
    closed_base: str | None  # the earned level the last close started from
    peak_count: int  # the highest purchase count this period reached (returns lower `count`)
    friends: int  # friends invited this period
    days: list[int]  # local days (ordinals) with a purchase this period
    closed_friends: int
    closed_days: list[int]
    #: Level id -> how many of the open period's sales meet an instant rule to that level (the
    #: highest one each meets) and are not returned in full. An instant upgrade stands while a
    #: sale stands for its level: kept here, not looked up in the receipt memory, which lets
    #: receipts go (`receipt_memory`) while their period is still open.
    instant_sales: dict[str, int]

    # The __init__s of this module are written out rather than made by @dataclass, which keeps
    # them (the fields' defaults are theirs alone). Compiled (models/compiled.py), the one it
    # makes runs as Python, and a replay makes these for every receipt: written out, they cost
    # about half as much.
    def __init__(
        self,
        level: str,
        base_level: str,
        period: str,
        amount: Decimal = ZERO,
        count: int = 0,
        reason: str = "initial",
        valid_until: str | None = None,
        closed_period: str | None = None,
        closed_amount: Decimal = ZERO,
        closed_count: int = 0,
        closed_base: str | None = None,
        peak_count: int = 0,
        friends: int = 0,
        days: list[int] | None = None,
        closed_friends: int = 0,
        closed_days: list[int] | None = None,
        instant_sales: dict[str, int] | None = None,
    ) -> None:
        self.level, self.base_level, self.period = level, base_level, period
        self.amount, self.count, self.reason, self.valid_until = amount, count, reason, valid_until
        self.closed_period, self.closed_amount, self.closed_count = closed_period, closed_amount, closed_count
        self.closed_base, self.peak_count, self.friends = closed_base, peak_count, friends
        self.days = days if days is not None else []
        self.closed_friends = closed_friends
        self.closed_days = closed_days if closed_days is not None else []
        self.instant_sales = instant_sales if instant_sales is not None else {}

    def seen_by_messages(self, system_id: str) -> tuple[Any, ...]:
        """What receipt messages read of this standing (models/messages.py), as it is now: the
        system, level, earned level, period and open counters. A tuple: a replay takes one on
        every receipt for the message it may render later (`from_seen` makes it a state again)."""
        return (system_id, self.level, self.base_level, self.period, self.amount, self.count, self.friends, *self.days)

    @classmethod
    def from_seen(cls, seen: tuple[Any, ...]) -> SystemState:
        """A standing with what `seen_by_messages` took (the rest at its defaults)."""
        _, level, base_level, period, amount, count, friends, *days = seen
        return cls(level, base_level, period, amount, count, friends=friends, days=days)

    @staticmethod
    def seen_to_json(seen: tuple[Any, ...]) -> list[Any]:
        """What `seen_by_messages` took, as JSON (its amount a string)."""
        return [*seen[:4], str(seen[4]), *seen[5:]]

    @staticmethod
    def seen_from_json(data: list[Any]) -> tuple[Any, ...]:
        return (*data[:4], Decimal(data[4]), *data[5:])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"l": self.level, "b": self.base_level, "p": self.period}
        if self.amount:
            out["a"] = str(self.amount)
        if self.count:
            out["c"] = self.count
        if self.reason != "initial":
            out["r"] = self.reason
        if self.valid_until:
            out["v"] = self.valid_until
        if self.closed_period:
            out["cp"] = self.closed_period
            out["ca"] = str(self.closed_amount)
            out["cc"] = self.closed_count
            out["cb"] = self.closed_base
        if self.peak_count != self.count:
            out["pk"] = self.peak_count
        if self.friends:
            out["f"] = self.friends
        if self.days:
            out["d"] = self.days
        if self.closed_friends:
            out["cf"] = self.closed_friends
        if self.closed_days:
            out["cd"] = self.closed_days
        if self.instant_sales:
            out["is"] = self.instant_sales
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SystemState:
        return cls(
            level=data["l"],
            base_level=data["b"],
            period=data["p"],
            amount=Decimal(data.get("a", 0)),
            count=data.get("c", 0),
            reason=data.get("r", "initial"),
            valid_until=data.get("v"),
            closed_period=data.get("cp"),
            closed_amount=Decimal(data.get("ca", 0)),
            closed_count=data.get("cc", 0),
            closed_base=data.get("cb"),
            peak_count=data.get("pk", data.get("c", 0)),
            friends=data.get("f", 0),
            days=data.get("d", []),
            closed_friends=data.get("cf", 0),
            closed_days=data.get("cd", []),
            instant_sales=data["is"] if "is" in data else _standing_before_counts(data),
        )


def _standing_before_counts(data: dict[str, Any]) -> dict[str, int]:
    """A state stored before `instant_sales` was kept: a level held by an instant rule has the sale
    that caused it standing (a return of it in full would have revoked it). Stored since, such a
    level always has its sales counted."""
    return {data["l"]: 1} if data.get("r") == "instant_rule" else {}


@dataclass(slots=True)
class ReceiptRecord:
    """What the state remembers of a counted receipt: enough to de-duplicate, handle its
    return, and (for the latest few) answer a till that resends it with the very receipt
    message of the first time."""

    issued_at: int  # epoch seconds
    total: Decimal
    returned: Decimal
    #: (system id, level id): the systems in whose open period the sale met an instant rule, and
    #: the highest level it met, which it stands for in `SystemState.instant_sales` until it is
    #: returned in full. A level of "" is a record stored before levels were kept (it names the
    #: system in which it caused an upgrade).
    instant: tuple[tuple[str, str], ...]
    #: The receipt-message event, its value made when first read: a replay stores those of
    #: the latest few receipts unrendered, and a resend renders one (models/engine.resent).
    message_event: Output | None

    def __init__(
        self,
        issued_at: int,
        total: Decimal,
        returned: Decimal = ZERO,
        instant: tuple[tuple[str, str], ...] = (),
        message_event: Output | None = None,
    ) -> None:
        self.issued_at, self.total, self.returned = issued_at, total, returned
        self.instant, self.message_event = instant, message_event

    @property
    def message(self) -> dict[str, Any] | None:
        """The receipt-message event's value."""
        return self.message_event.value if self.message_event is not None else None

    def to_json(self, receipt_id: str) -> list[Any]:
        out: list[Any] = [receipt_id, self.issued_at, str(self.total)]
        if self.returned or self.instant:
            out += [str(self.returned), list(self.instant)]
        return out

    @classmethod
    def from_json(cls, data: list[Any]) -> tuple[str, ReceiptRecord]:
        # By position (issued_at, total, returned, instant): a replay reads millions of them back.
        if len(data) > 3:
            instant = tuple((each, "") if isinstance(each, str) else (each[0], each[1]) for each in data[4])
            return data[0], cls(data[1], Decimal(data[2]), Decimal(data[3]), instant)
        return data[0], cls(data[1], Decimal(data[2]))


@dataclass(slots=True)
class CustomerState:
    customer_id: str
    client_state: ClientState
    systems: dict[str, SystemState]
    receipts: dict[str, ReceiptRecord]  # in the order they were counted
    latest_issued_at: int | None  # epoch seconds of the newest receipt
    forgotten_before: int  # epoch seconds; receipts up to here were dropped from `receipts`
    version: int  # how many times this state changed; orders the customer-status snapshots
    last_cause: tuple[str, datetime | None]  # (input id, event time) of the latest change
    commands: list[str]  # the latest command and customer-event ids applied
    birth_date: str | None  # personal data: erased on exclusion
    registered_at: str | None  # ISO instant of the `registered` event
    cards: list[str]  # personal data: erased on exclusion
    merged_into: str | None  # a Deleted temporary owner: the member who took its counters
    granted: list[str]  # "offer:date" of the latest campaign grants
    # (system, previous, current, direction) of changes made between receipts, for the next receipt's message
    news: list[tuple[str, str | None, str, str]]
    #: Epoch seconds of the newest receipt moved from `receipts` to the receipt store (0: none);
    #: a receipt id not in `receipts` is looked up there only when this is set.
    spilled_up_to: int
    #: Receipts `receipts` let go of since the driver last took them for the receipt store
    #: (models/processor.py); never encoded.
    spilled: list[tuple[str, ReceiptRecord]]

    def __init__(
        self,
        customer_id: str,
        client_state: ClientState = ClientState.REGISTERED,
        systems: dict[str, SystemState] | None = None,
        receipts: dict[str, ReceiptRecord] | None = None,
        latest_issued_at: int | None = None,
        forgotten_before: int = 0,
        version: int = 0,
        last_cause: tuple[str, datetime | None] = ("", None),
        commands: list[str] | None = None,
        birth_date: str | None = None,
        registered_at: str | None = None,
        cards: list[str] | None = None,
        merged_into: str | None = None,
        granted: list[str] | None = None,
        news: list[tuple[str, str | None, str, str]] | None = None,
        spilled_up_to: int = 0,
        spilled: list[tuple[str, ReceiptRecord]] | None = None,
    ) -> None:
        self.customer_id, self.client_state = customer_id, client_state
        self.systems = systems if systems is not None else {}
        self.receipts = receipts if receipts is not None else {}
        self.latest_issued_at, self.forgotten_before, self.version = latest_issued_at, forgotten_before, version
        self.last_cause = last_cause
        self.commands = commands if commands is not None else []
        self.birth_date, self.registered_at = birth_date, registered_at
        self.cards = cards if cards is not None else []
        self.merged_into = merged_into
        self.granted = granted if granted is not None else []
        self.news = news if news is not None else []
        self.spilled_up_to = spilled_up_to
        self.spilled = spilled if spilled is not None else []

    @staticmethod
    def stored_with_birth_date(raw: bytes) -> bool:
        """Whether encoded state has a birth date, without decoding it (`to_bytes` writes `"bd"`)."""
        return b'"bd":"' in raw

    def to_bytes(self) -> bytes:
        rendered, later = self._kept_messages()
        return orjson.dumps(
            {
                "id": self.customer_id,
                "cs": self.client_state.value,
                "sys": {k: v.to_json() for k, v in self.systems.items()},
                "rc": [r.to_json(k) for k, r in self.receipts.items()],
                "ro": rendered,
                **({"rl": later} if later else {}),
                "lt": self.latest_issued_at,
                "fb": self.forgotten_before,
                "v": self.version,
                "lc": [self.last_cause[0], iso(self.last_cause[1])],
                "cm": self.commands,
                **({"bd": self.birth_date} if self.birth_date else {}),
                **({"ra": self.registered_at} if self.registered_at else {}),
                **({"cards": self.cards} if self.cards else {}),
                **({"mi": self.merged_into} if self.merged_into else {}),
                **({"gr": self.granted} if self.granted else {}),
                **({"nw": self.news} if self.news else {}),
                **({"su": self.spilled_up_to} if self.spilled_up_to else {}),
            }
        )

    def _kept_messages(self) -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]]]:
        """The receipt messages kept for a resend: those rendered already, by value ("ro"), and
        those not yet (a replay's), by what they are to be rendered from ("rl"). Rendering the
        latest messages of every customer would be most of the cost of encoding a replay's
        states, and a replayed message is read only if a till resends its receipt."""
        rendered: dict[str, dict[str, Any]] = {}
        later: dict[str, list[Any]] = {}
        for receipt_id, record in self.receipts.items():
            event = record.message_event
            if event is None:
                continue
            if isinstance(event, ReceiptMessage) and (pending := event.unrendered()) is not None:
                later[receipt_id] = [event.key, event.customer_id, event.occurred_at.isoformat(), pending]
            else:
                rendered[receipt_id] = event.value
        return rendered, later

    @classmethod
    def from_bytes(cls, raw: bytes) -> CustomerState:
        data = orjson.loads(raw)
        receipts = dict([ReceiptRecord.from_json(r) for r in data["rc"]])  # a list: faster than a generator
        for receipt_id, message in data["ro"].items():
            if isinstance(message, list):  # written before 0.2: every event of the receipt
                message = next((o["v"] for o in message if o["k"] == "receipt_message"), None)
            if message is not None:
                receipts[receipt_id].message_event = Output(OutputKind.RECEIPT_MESSAGE, message["pos_id"], message)
        for receipt_id, (pos_id, customer_id, occurred_at, pending) in data.get("rl", {}).items():
            at = datetime.fromisoformat(occurred_at)
            receipts[receipt_id].message_event = ReceiptMessage(
                receipt_id, pos_id, customer_id, StoredLines(pending), at
            )
        return cls(
            customer_id=data["id"],
            client_state=ClientState(data["cs"]),
            systems={k: SystemState.from_json(v) for k, v in data["sys"].items()},
            receipts=receipts,
            latest_issued_at=data.get("lt"),
            forgotten_before=data.get("fb", 0),
            version=data.get("v", 0),
            last_cause=(data["lc"][0], datetime.fromisoformat(data["lc"][1]) if data["lc"][1] else None)
            if "lc" in data
            else ("", None),
            commands=data.get("cm", []),
            birth_date=data.get("bd"),
            registered_at=data.get("ra"),
            cards=data.get("cards", []),
            merged_into=data.get("mi"),
            granted=data.get("gr", []),
            news=[(n[0], n[1], n[2], n[3]) for n in data.get("nw", ())],
            spilled_up_to=data.get("su", 0),
        )


@dataclass(slots=True)
class KeptReceipt:
    """A receipt in the receipt store (models/processor.py): its record without a message."""

    receipt_id: str
    record: ReceiptRecord

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.record.to_json(self.receipt_id))

    @classmethod
    def from_bytes(cls, raw: bytes) -> KeptReceipt:
        receipt_id, record = ReceiptRecord.from_json(orjson.loads(raw))
        return cls(receipt_id, record)
