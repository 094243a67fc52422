"""Level arithmetic of a status system: thresholds, downgrade policies, what is left to reach."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final, Generic, NamedTuple, TypeVar

from models.events import number
from models.schema import CounterKind, DowngradePolicy, Level, StatusSystem

CENT = Decimal("0.01")
# The members the rules compare with, as constants: compiled, `CounterKind.PURCHASE_AMOUNT`
# looks the member up through the enum's metaclass on every use (far dearer than a C global's
# load), and the rules ask on every receipt. models/messages reads these too.
PURCHASE_AMOUNT: Final = CounterKind.PURCHASE_AMOUNT
PURCHASE_COUNT: Final = CounterKind.PURCHASE_COUNT
FRIENDS_INVITED: Final = CounterKind.FRIENDS_INVITED
_RECOMPUTE: Final = DowngradePolicy.RECOMPUTE
_ONE_STEP: Final = DowngradePolicy.ONE_STEP
_NO_DOWNGRADE: Final = DowngradePolicy.NEVER


def earned_level(system: StatusSystem, counter: Decimal) -> Level:
    """The highest level whose threshold the counter strictly exceeds (the first level otherwise).

    The thresholds ascend (validated), so the levels whose threshold lies below the counter
    are the first ones: as many as `bisect_left` counts, past the first level."""
    return system.levels[bisect_left(system.thresholds, counter)]


def level_after_close(system: StatusSystem, base_level: str, counter: Decimal) -> Level:
    """The level for the next period, from the level earned last time and this period's counter."""
    earned = earned_level(system, counter)
    downgrade = system.downgrade
    if downgrade == _RECOMPUTE:
        return earned  # no ranks needed
    base_rank, earned_rank = system.ranks[base_level], system.ranks[earned.id]
    if downgrade == _ONE_STEP:
        return system.levels[max(earned_rank, base_rank - 1)]
    assert downgrade == _NO_DOWNGRADE  # validated: one of the three
    return system.levels[max(earned_rank, base_rank)]


def to_keep(system: StatusSystem, level: str, base_level: str, counter: Decimal) -> Decimal | None:
    """What the counter must still grow by for the close to leave the customer at `level` or
    higher; None when it already does (or nothing the counter can do would)."""
    rank = system.ranks[level]
    if system.ranks[level_after_close(system, base_level, counter).id] >= rank:
        return None
    step = CENT if system.counter is PURCHASE_AMOUNT else Decimal(1)
    for threshold in sorted(lv.above for lv in system.levels if lv.above is not None and lv.above >= counter):
        if system.ranks[level_after_close(system, base_level, threshold + step).id] >= rank:
            return threshold + step - counter
    return None


class NextTarget(NamedTuple):
    """A named tuple, not a frozen dataclass: a receipt message makes one per status system."""

    level: Level
    remaining: Decimal  # what the counter must still grow by to earn `level`


def next_target(system: StatusSystem, level: str, base_level: str, counter: Decimal) -> NextTarget | None:
    """The level worth reaching this period, or None when the counter already earns the top.

    That is the level above what the customer would get if the period closed now,
    or, for a customer who holds a higher level at the moment (an instant upgrade,
    say), that level: "spend 40.01 more to be Gold next month" rather than a
    message about a level below the one they have.

    `remaining` is the smallest addition that makes the counter strictly greater than
    the level's threshold: one cent for amounts, one for counts, so a receipt line
    that says "spend 79.51 more" is a promise that holds.
    """
    projected = system.ranks[level_after_close(system, base_level, counter).id]
    if projected + 1 >= len(system.levels):
        return None
    target = system.levels[max(projected + 1, system.ranks[level])]
    assert target.above is not None  # validated: every level but the first has one
    unit = CENT if system.counter is PURCHASE_AMOUNT else Decimal(1)
    return NextTarget(target, max(target.above - counter + unit, unit))


def direction(system: StatusSystem, previous: str | None, current: str) -> str:
    if previous is None:
        return "assign"
    return "upgrade" if system.ranks[current] > system.ranks[previous] else "downgrade"


class LevelFacts:
    """What a level shows on receipts and in snapshots, worked out once per status system.

    A receipt's lines and a customer's snapshot read a level's name, discount and privileges
    every time; read off the configuration's models (pydantic, which runs as Python), the
    privileges alone cost more than the rest of a snapshot."""

    __slots__ = ("discount", "extras", "id", "name", "privileges")

    def __init__(self, level: Level) -> None:
        self.id, self.name = level.id, level.name
        #: The privileges as a snapshot shows them (numbers as JSON numbers or exact decimal text).
        self.privileges: dict[str, Any] = {k: number(v) if not isinstance(v, str) else v for k, v in level.privileges}
        #: `discount_percent` as a receipt line shows it.
        self.discount = str(number(level.privileges.discount_percent))
        #: The other privileges, as receipt-line metavariables under their own names.
        self.extras: dict[str, str] = {k: str(v) for k, v in (level.privileges.model_extra or {}).items()}


K = TypeVar("K")
V = TypeVar("V")


class ByIdentity(Generic[K, V]):
    """`make(key)` kept per key object, for keys that never change (a configuration and its
    parts are frozen): looked up by identity, not by a hash of every field. Each entry holds its
    key, so an id is never reused while its entry lives; at `limit` entries all are let go (a
    worker has one configuration and a what-if two: only tests make many)."""

    def __init__(self, make: Callable[[K], V], limit: int) -> None:
        self._make, self._limit = make, limit
        self._entries: dict[int, tuple[K, V]] = {}

    def __call__(self, key: K) -> V:
        entry = self._entries.get(id(key))
        if entry is not None and entry[0] is key:
            return entry[1]
        if len(self._entries) >= self._limit:
            self._entries.clear()
        value = self._make(key)
        self._entries[id(key)] = (key, value)
        return value


def _levels_of(system: StatusSystem) -> dict[str, LevelFacts]:
    return {level.id: LevelFacts(level) for level in system.levels}


#: Each level's `LevelFacts` by level id, made once per status system.
level_facts: ByIdentity[StatusSystem, dict[str, LevelFacts]] = ByIdentity(_levels_of, 256)
