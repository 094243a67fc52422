"""Calendar periods in the programme's time zone.

A period is identified by its kind and the local date it starts on. Its
boundaries are local midnights, so a month in Europe/Berlin that contains the
autumn DST change is 745 hours long and the instant it starts is 23:00 UTC on
the previous day.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from models.errors import InvalidPeriod

MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


class PeriodKind(enum.StrEnum):
    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"


_ID_PATTERNS = {
    PeriodKind.WEEK: re.compile(r"([0-9]{4})-W([0-9]{2})\Z"),
    PeriodKind.MONTH: re.compile(r"([0-9]{4})-([0-9]{2})\Z"),
    PeriodKind.QUARTER: re.compile(r"([0-9]{4})-Q([1-4])\Z"),
    PeriodKind.YEAR: re.compile(r"([0-9]{4})\Z"),
}


@dataclass(frozen=True, order=True, slots=True)
class Period:
    kind: PeriodKind
    first_day: date
    #: Its id ('2026-11'), made once: the engine reads it about eight times a receipt.
    id: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", _period_id(self.kind, self.first_day))

    @property
    def name(self) -> str:
        """How a receipt line names the period: 'November', 'week 45', 'Q4 2026', '2026'."""
        d = self.first_day
        match self.kind:
            case PeriodKind.WEEK:
                return f"week {d.isocalendar()[1]}"
            case PeriodKind.MONTH:
                return MONTH_NAMES[d.month - 1]
            case PeriodKind.QUARTER:
                return f"Q{(d.month - 1) // 3 + 1} {d.year}"
            case PeriodKind.YEAR:
                return f"{d.year}"

    def next(self) -> Period:
        return _next(self.kind, self.first_day)

    @property
    def last_day(self) -> date:
        return _next(self.kind, self.first_day).first_day - timedelta(days=1)

    def starts_at(self, tz: ZoneInfo) -> datetime:
        return local_midnight(self.first_day, tz)

    def ends_at(self, tz: ZoneInfo) -> datetime:
        """The first instant after the period: the next period's start."""
        return self.next().starts_at(tz)


@functools.lru_cache(maxsize=4096)
def _period_id(kind: PeriodKind, d: date) -> str:
    # Cached: the engine compares a receipt's period ids with the state's several times a receipt.
    match kind:
        case PeriodKind.WEEK:
            year, week, _ = d.isocalendar()
            return f"{year}-W{week:02d}"
        case PeriodKind.MONTH:
            return f"{d.year}-{d.month:02d}"
        case PeriodKind.QUARTER:
            return f"{d.year}-Q{(d.month - 1) // 3 + 1}"
        case PeriodKind.YEAR:
            return f"{d.year}"


@functools.lru_cache(maxsize=1024)
def _next(kind: PeriodKind, d: date) -> Period:
    # Cached: a receipt's message asks for the period's end several times, and there
    # are only a few periods in play at any time.
    match kind:
        case PeriodKind.WEEK:
            return Period(kind, d + timedelta(days=7))
        case PeriodKind.MONTH:
            return Period(kind, _add_months(d, 1))
        case PeriodKind.QUARTER:
            return Period(kind, _add_months(d, 3))
        case PeriodKind.YEAR:
            return Period(kind, d.replace(year=d.year + 1))


def _add_months(d: date, months: int) -> date:
    index = d.year * 12 + d.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


@functools.lru_cache(maxsize=1024)
def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of a local day, as an aware datetime in `tz`.

    Cached (a datetime never changes): periods' starts and ends, and each day's
    campaign run, which asks it for every customer, ask it of the same few days.

    Where a DST change skips midnight, fold=0 maps the missing wall time to the
    offset before the change, which is exactly the instant the day begins; the
    round trip through UTC then shows it with the right offset.
    """
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC).astimezone(tz)


def period_containing(instant: datetime, kind: PeriodKind, tz: ZoneInfo) -> Period:
    if instant.tzinfo is None:
        raise ValueError("period_containing needs a timezone-aware datetime")
    return period_of_day(kind, local_date(instant, tz))


_last_epoch: tuple[datetime, float] | None = None


def epoch_of(instant: datetime) -> float:
    """`instant.timestamp()`, the last answer kept for that very object: a replay asks it
    of each receipt's `issued_at` three times (the day, the close frontier, the
    de-duplication), and for an aware datetime each conversion is a noticeable share of a
    replay."""
    global _last_epoch
    last = _last_epoch
    if last is not None and last[0] is instant:
        return last[1]
    at = instant.timestamp()
    _last_epoch = (instant, at)
    return at


_last_local: tuple[datetime, ZoneInfo, date] | None = None
#: The local day last worked out: its first instant and the next day's (epoch seconds), zone, date.
_last_day: tuple[float, float, ZoneInfo | None, date] = (0.0, 0.0, None, date.min)
_ONE_DAY = timedelta(days=1)


def local_date(instant: datetime, tz: ZoneInfo) -> date:
    """The local calendar day of an aware instant.

    The engine asks this of the same receipt's `issued_at` about ten times (periods,
    active days, at-risk days); the last answer is kept for that very object. Receipts
    come in time order, so the next one most often falls on the same day as the one
    before it: that day's bounds are kept too, and a comparison of epoch seconds answers
    instead of a conversion to the zone, the dearer of the two.
    """
    global _last_local, _last_day
    last = _last_local
    if last is not None and last[0] is instant and last[1] is tz:
        return last[2]
    at, known = epoch_of(instant), _last_day
    if known[2] is tz and known[0] <= at < known[1]:
        day = known[3]
    else:
        day = instant.astimezone(tz).date()
        start, end = local_midnight(day, tz).timestamp(), local_midnight(day + _ONE_DAY, tz).timestamp()
        _last_day = (start, end, tz, day)
    _last_local = (instant, tz, day)
    return day


@functools.lru_cache(maxsize=4096)
def period_of_day(kind: PeriodKind, day: date) -> Period:
    """The period of that kind holding that local day (`period_containing` of a day already known)."""
    # Cached: every receipt of a day asks for the same few periods.
    match kind:
        case PeriodKind.WEEK:
            return Period(kind, day - timedelta(days=day.weekday()))
        case PeriodKind.MONTH:
            return Period(kind, day.replace(day=1))
        case PeriodKind.QUARTER:
            return Period(kind, date(day.year, (day.month - 1) // 3 * 3 + 1, 1))
        case PeriodKind.YEAR:
            return Period(kind, date(day.year, 1, 1))


@functools.lru_cache(maxsize=1024)
def parse_period(kind: PeriodKind, period_id: str) -> Period:
    """Parses '2026-11', '2026-W45', '2026-Q4' or '2026' for the given kind (cached: ids recur)."""
    match = _ID_PATTERNS[kind].match(period_id)
    if match is None:
        raise InvalidPeriod(f"{period_id!r} is not a {kind.value} id")
    year = int(match.group(1))
    try:
        match kind:
            case PeriodKind.WEEK:
                first = date.fromisocalendar(year, int(match.group(2)), 1)
            case PeriodKind.MONTH:
                first = date(year, int(match.group(2)), 1)
            case PeriodKind.QUARTER:
                first = date(year, (int(match.group(2)) - 1) * 3 + 1, 1)
            case PeriodKind.YEAR:
                first = date(year, 1, 1)
    except ValueError as exc:
        raise InvalidPeriod(f"{period_id!r} is not a {kind.value} id: {exc}") from exc
    return Period(kind, first)
