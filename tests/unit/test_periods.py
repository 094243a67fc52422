"""Calendar periods in the programme's zone: containment, ids, names, DST and leap days."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from models.errors import InvalidInput, InvalidPeriod
from models.periods import Period, PeriodKind, epoch_of, local_date, local_midnight, parse_period, period_containing

BERLIN = ZoneInfo("Europe/Berlin")
UTC_ZONE = ZoneInfo("UTC")
WEEK, MONTH, QUARTER, YEAR = PeriodKind.WEEK, PeriodKind.MONTH, PeriodKind.QUARTER, PeriodKind.YEAR


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def hours_between(start: datetime, end: datetime) -> timedelta:
    # Python subtracts two datetimes of the same tzinfo as wall times; go through UTC.
    return end.astimezone(UTC) - start.astimezone(UTC)


# --- containment, ids, names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "instant", "first_day", "period_id", "name"),
    [
        (WEEK, berlin(2026, 11, 3, 12), date(2026, 11, 2), "2026-W45", "week 45"),
        (WEEK, berlin(2026, 11, 8, 23, 59, 59), date(2026, 11, 2), "2026-W45", "week 45"),
        (WEEK, berlin(2026, 11, 9, 0, 0, 0), date(2026, 11, 9), "2026-W46", "week 46"),
        # 1 Jan 2027 is a Friday of ISO week 53 of 2026.
        (WEEK, berlin(2027, 1, 1, 10), date(2026, 12, 28), "2026-W53", "week 53"),
        (WEEK, berlin(2027, 1, 4, 0), date(2027, 1, 4), "2027-W01", "week 1"),
        (MONTH, berlin(2026, 11, 3, 12), date(2026, 11, 1), "2026-11", "November"),
        (MONTH, berlin(2026, 1, 31, 23), date(2026, 1, 1), "2026-01", "January"),
        (QUARTER, berlin(2026, 11, 3, 12), date(2026, 10, 1), "2026-Q4", "Q4 2026"),
        (QUARTER, berlin(2026, 3, 31, 23, 59, 59), date(2026, 1, 1), "2026-Q1", "Q1 2026"),
        (QUARTER, berlin(2026, 4, 1), date(2026, 4, 1), "2026-Q2", "Q2 2026"),
        (QUARTER, berlin(2026, 9, 30, 12), date(2026, 7, 1), "2026-Q3", "Q3 2026"),
        (YEAR, berlin(2026, 11, 3, 12), date(2026, 1, 1), "2026", "2026"),
    ],
)
def test_containment_id_and_name(kind, instant, first_day, period_id, name):
    period = period_containing(instant, kind, BERLIN)
    assert period == Period(kind, first_day)
    assert period.first_day == first_day
    assert period.id == period_id
    assert period.name == name


def test_containment_needs_an_aware_instant():
    with pytest.raises(ValueError, match="timezone-aware"):
        period_containing(datetime(2026, 11, 3, 12), MONTH, BERLIN)  # noqa: DTZ001


@pytest.mark.parametrize(
    ("kind", "first", "following"),
    [
        (WEEK, date(2026, 12, 28), date(2027, 1, 4)),
        (WEEK, date(2026, 11, 2), date(2026, 11, 9)),
        (MONTH, date(2026, 1, 1), date(2026, 2, 1)),
        (MONTH, date(2026, 12, 1), date(2027, 1, 1)),
        (QUARTER, date(2026, 10, 1), date(2027, 1, 1)),
        (QUARTER, date(2026, 1, 1), date(2026, 4, 1)),
        (YEAR, date(2026, 1, 1), date(2027, 1, 1)),
        (YEAR, date(2028, 1, 1), date(2029, 1, 1)),
    ],
)
def test_next(kind, first, following):
    period = Period(kind, first)
    assert period.next() == Period(kind, following)
    assert period.next() > period
    assert period.last_day == following - timedelta(days=1)


def test_month_next_ids_across_a_year():
    period = parse_period(MONTH, "2026-01")
    ids = []
    for _ in range(13):
        ids.append(period.id)
        period = period.next()
    assert ids == [f"2026-{m:02d}" for m in range(1, 13)] + ["2027-01"]


def test_last_days():
    assert parse_period(MONTH, "2026-02").last_day == date(2026, 2, 28)
    assert parse_period(MONTH, "2028-02").last_day == date(2028, 2, 29)
    assert parse_period(MONTH, "2026-04").last_day == date(2026, 4, 30)
    assert parse_period(QUARTER, "2026-Q4").last_day == date(2026, 12, 31)
    assert parse_period(WEEK, "2026-W53").last_day == date(2027, 1, 3)
    assert parse_period(YEAR, "2026").last_day == date(2026, 12, 31)


# --- parse_period ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "period_id", "first_day"),
    [
        (WEEK, "2026-W45", date(2026, 11, 2)),
        (WEEK, "2026-W01", date(2025, 12, 29)),
        (WEEK, "2026-W53", date(2026, 12, 28)),
        (WEEK, "2020-W53", date(2020, 12, 28)),
        (MONTH, "2026-11", date(2026, 11, 1)),
        (MONTH, "2028-02", date(2028, 2, 1)),
        (QUARTER, "2026-Q1", date(2026, 1, 1)),
        (QUARTER, "2026-Q2", date(2026, 4, 1)),
        (QUARTER, "2026-Q3", date(2026, 7, 1)),
        (QUARTER, "2026-Q4", date(2026, 10, 1)),
        (YEAR, "2026", date(2026, 1, 1)),
    ],
)
def test_parse_period_good(kind, period_id, first_day):
    period = parse_period(kind, period_id)
    assert period == Period(kind, first_day)
    assert period.id == period_id  # ids round-trip


@pytest.mark.parametrize(
    ("kind", "period_id"),
    [
        (MONTH, "2026-13"),
        (MONTH, "2026-00"),
        (MONTH, "2026-1"),
        (MONTH, "2026/11"),
        (MONTH, "2026-11-01"),
        (MONTH, "2026-W45"),
        (MONTH, ""),
        (WEEK, "2025-W53"),  # 2025 has 52 ISO weeks
        (WEEK, "2026-W00"),
        (WEEK, "2026-W5"),
        (WEEK, "2026-11"),
        (QUARTER, "2026-Q5"),
        (QUARTER, "2026-Q0"),
        (QUARTER, "2026-4"),
        (YEAR, "26"),
        (YEAR, "2026-01"),
        (YEAR, " 2026"),
    ],
)
def test_parse_period_bad(kind, period_id):
    with pytest.raises(InvalidPeriod, match=f"is not a {kind.value} id"):
        parse_period(kind, period_id)


def test_invalid_period_is_invalid_input():
    # The engine and the command parser dead-letter InvalidInput; a bad period id must be one.
    with pytest.raises(InvalidInput):
        parse_period(MONTH, "2026-13")


# --- Europe/Berlin boundaries and DST --------------------------------------------------------


def test_november_boundaries():
    nov = parse_period(MONTH, "2026-11")
    assert nov.starts_at(BERLIN).isoformat() == "2026-11-01T00:00:00+01:00"
    assert nov.ends_at(BERLIN).isoformat() == "2026-12-01T00:00:00+01:00"
    assert hours_between(nov.starts_at(BERLIN), nov.ends_at(BERLIN)) == timedelta(hours=720)


def test_march_2026_loses_an_hour():
    march = parse_period(MONTH, "2026-03")
    start, end = march.starts_at(BERLIN), march.ends_at(BERLIN)
    assert start.isoformat() == "2026-03-01T00:00:00+01:00"
    assert end.isoformat() == "2026-04-01T00:00:00+02:00"
    assert start.astimezone(UTC) == datetime(2026, 2, 28, 23, tzinfo=UTC)
    assert end.astimezone(UTC) == datetime(2026, 3, 31, 22, tzinfo=UTC)
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=743)
    # The change itself is on Sunday 29 March 2026.
    assert berlin(2026, 3, 29, 1, 30).utcoffset() == timedelta(hours=1)
    assert berlin(2026, 3, 29, 3, 30).utcoffset() == timedelta(hours=2)


def test_october_2026_gains_an_hour():
    october = parse_period(MONTH, "2026-10")
    start, end = october.starts_at(BERLIN), october.ends_at(BERLIN)
    assert start.isoformat() == "2026-10-01T00:00:00+02:00"
    assert end.isoformat() == "2026-11-01T00:00:00+01:00"
    assert start.astimezone(UTC) == datetime(2026, 9, 30, 22, tzinfo=UTC)
    assert end.astimezone(UTC) == datetime(2026, 10, 31, 23, tzinfo=UTC)
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=745)
    assert berlin(2026, 10, 25, 1, 30).utcoffset() == timedelta(hours=2)
    assert berlin(2026, 10, 25, 3, 30).utcoffset() == timedelta(hours=1)


def test_ends_at_is_next_starts_at():
    for kind, period_id in [(WEEK, "2026-W43"), (MONTH, "2026-10"), (QUARTER, "2026-Q1"), (YEAR, "2026")]:
        period = parse_period(kind, period_id)
        assert period.ends_at(BERLIN) == period.next().starts_at(BERLIN)


def test_week_with_the_autumn_change_is_169_hours():
    week = period_containing(berlin(2026, 10, 25, 12), WEEK, BERLIN)
    assert week.id == "2026-W43"
    assert hours_between(week.starts_at(BERLIN), week.ends_at(BERLIN)) == timedelta(hours=169)


@pytest.mark.parametrize(
    ("last_second", "first_second", "kind", "before_id", "after_id"),
    [
        (berlin(2026, 11, 30, 23, 59, 59), berlin(2026, 12, 1, 0, 0, 0), MONTH, "2026-11", "2026-12"),
        (berlin(2026, 3, 31, 23, 59, 59), berlin(2026, 4, 1, 0, 0, 0), MONTH, "2026-03", "2026-04"),
        (berlin(2026, 10, 31, 23, 59, 59), berlin(2026, 11, 1, 0, 0, 0), MONTH, "2026-10", "2026-11"),
        (berlin(2026, 12, 31, 23, 59, 59), berlin(2027, 1, 1, 0, 0, 0), MONTH, "2026-12", "2027-01"),
        (berlin(2026, 12, 31, 23, 59, 59), berlin(2027, 1, 1, 0, 0, 0), QUARTER, "2026-Q4", "2027-Q1"),
        (berlin(2026, 12, 31, 23, 59, 59), berlin(2027, 1, 1, 0, 0, 0), YEAR, "2026", "2027"),
        (berlin(2026, 11, 8, 23, 59, 59), berlin(2026, 11, 9, 0, 0, 0), WEEK, "2026-W45", "2026-W46"),
    ],
)
def test_last_and_first_local_second_are_in_different_periods(last_second, first_second, kind, before_id, after_id):
    assert period_containing(last_second, kind, BERLIN).id == before_id
    assert period_containing(first_second, kind, BERLIN).id == after_id
    # The same instants written in UTC give the same answer.
    assert period_containing(last_second.astimezone(UTC), kind, BERLIN).id == before_id
    assert period_containing(first_second.astimezone(UTC), kind, BERLIN).id == after_id


def test_utc_instant_already_next_month_in_berlin():
    # 23:30 UTC on 30 November is 00:30 on 1 December in Berlin.
    instant = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    assert period_containing(instant, MONTH, BERLIN).id == "2026-12"
    assert period_containing(instant, MONTH, ZoneInfo("UTC")).id == "2026-11"
    # The last UTC hour of 2026 is 2027 in Berlin.
    new_year = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
    assert period_containing(new_year, YEAR, BERLIN).id == "2027"
    assert period_containing(new_year - timedelta(seconds=1), YEAR, BERLIN).id == "2026"
    # A summer instant: 22:00 UTC on 31 July is midnight CEST on 1 August.
    assert period_containing(datetime(2026, 7, 31, 22, 0, tzinfo=UTC), MONTH, BERLIN).id == "2026-08"
    assert period_containing(datetime(2026, 7, 31, 21, 59, 59, tzinfo=UTC), MONTH, BERLIN).id == "2026-07"


def test_instant_with_foreign_offset_is_judged_in_the_configured_zone():
    # 2026-11-30T20:00-05:00 is 02:00 on 1 December in Berlin.
    instant = datetime.fromisoformat("2026-11-30T20:00:00-05:00")
    assert period_containing(instant, MONTH, BERLIN).id == "2026-12"


# --- leap day --------------------------------------------------------------------------------


def test_leap_day():
    leap = berlin(2028, 2, 29, 12)
    assert period_containing(leap, MONTH, BERLIN).id == "2028-02"
    assert period_containing(berlin(2028, 2, 29, 23, 59, 59), MONTH, BERLIN).id == "2028-02"
    assert period_containing(berlin(2028, 3, 1, 0, 0, 0), MONTH, BERLIN).id == "2028-03"
    week = period_containing(leap, WEEK, BERLIN)
    assert week.id == "2028-W09"
    assert week.first_day == date(2028, 2, 28)
    assert week.last_day == date(2028, 3, 5)
    quarter = period_containing(leap, QUARTER, BERLIN)
    assert quarter.id == "2028-Q1"
    assert quarter.last_day == date(2028, 3, 31)
    feb = parse_period(MONTH, "2028-02")
    assert hours_between(feb.starts_at(BERLIN), feb.ends_at(BERLIN)) == timedelta(days=29)
    assert period_containing(leap, YEAR, BERLIN).id == "2028"


# --- local midnight --------------------------------------------------------------------------


def test_local_midnight_ordinary_days():
    assert local_midnight(date(2026, 11, 1), BERLIN).isoformat() == "2026-11-01T00:00:00+01:00"
    assert local_midnight(date(2026, 7, 1), BERLIN).isoformat() == "2026-07-01T00:00:00+02:00"
    # The DST days in Berlin change at 02:00/03:00, so midnight itself exists.
    assert local_midnight(date(2026, 3, 29), BERLIN).isoformat() == "2026-03-29T00:00:00+01:00"
    assert local_midnight(date(2026, 10, 25), BERLIN).isoformat() == "2026-10-25T00:00:00+02:00"


def test_local_midnight_where_dst_skips_midnight():
    # In São Paulo DST began at 00:00 on 4 November 2018: clocks jumped to 01:00,
    # so that day began at 01:00-02:00, which is 03:00 UTC.
    sao_paulo = ZoneInfo("America/Sao_Paulo")
    start = local_midnight(date(2018, 11, 4), sao_paulo)
    assert start.astimezone(UTC) == datetime(2018, 11, 4, 3, 0, tzinfo=UTC)
    assert start.isoformat() == "2018-11-04T01:00:00-02:00"
    assert start.utcoffset() == timedelta(hours=-2)
    # 3 November is an ordinary 24-hour day, 4 November has 23 hours.
    previous = local_midnight(date(2018, 11, 3), sao_paulo)
    assert hours_between(previous, start) == timedelta(hours=24)
    assert hours_between(start, local_midnight(date(2018, 11, 5), sao_paulo)) == timedelta(hours=23)
    # A second before the day starts is still 3 November there.
    assert (start.astimezone(UTC) - timedelta(seconds=1)).astimezone(sao_paulo).date() == date(2018, 11, 3)
    assert period_containing(start.astimezone(UTC), WEEK, sao_paulo).first_day == date(2018, 10, 29)
    # A November 2018 month in São Paulo starts before the change and ends after it.
    nov = parse_period(MONTH, "2018-11")
    assert nov.starts_at(sao_paulo).isoformat() == "2018-11-01T00:00:00-03:00"
    assert nov.ends_at(sao_paulo).isoformat() == "2018-12-01T00:00:00-02:00"
    assert hours_between(nov.starts_at(sao_paulo), nov.ends_at(sao_paulo)) == timedelta(hours=719)
    week = period_containing(datetime(2018, 11, 4, 12, tzinfo=sao_paulo), WEEK, sao_paulo)
    assert week.first_day == date(2018, 10, 29)
    assert hours_between(week.starts_at(sao_paulo), week.ends_at(sao_paulo)) == timedelta(hours=167)


@pytest.mark.parametrize(
    ("zone", "first"),
    [
        ("Europe/Berlin", datetime(2026, 3, 28, 20, tzinfo=UTC)),  # spring change
        ("Europe/Berlin", datetime(2026, 10, 24, 20, tzinfo=UTC)),  # autumn change
        ("America/Sao_Paulo", datetime(2018, 11, 3, 20, tzinfo=UTC)),  # DST skips midnight
        ("America/Sao_Paulo", datetime(2019, 2, 16, 20, tzinfo=UTC)),  # midnight comes twice
        ("Europe/Berlin", datetime(2028, 2, 28, 20, tzinfo=UTC)),  # leap day
    ],
)
def test_local_date_remembers_a_day_but_never_past_its_edges(zone, first):
    # local_date keeps the bounds of the day it last worked out; instants in time order and
    # back again, a minute apart and each edge's second before and at, in other zones' offsets
    # too, must each get the day a fresh conversion gives.
    tz, other = ZoneInfo(zone), ZoneInfo("Asia/Tokyo")
    instants = [first + timedelta(minutes=n) for n in range(0, 3 * 24 * 60, 7)]
    for day in (first.date() + timedelta(days=n) for n in range(4)):
        edge = local_midnight(day, tz).astimezone(UTC)
        instants += [edge - timedelta(seconds=1), edge, edge.astimezone(other), edge.astimezone(tz)]
    for instant in [*instants, *reversed(instants), *sorted(instants)]:
        assert local_date(instant, tz) == instant.astimezone(tz).date(), instant
        assert local_date(instant, UTC_ZONE) == instant.astimezone(UTC).date(), instant


def test_epoch_of_answers_for_each_instant_asked():
    # epoch_of keeps its last answer for that very object: equal instants in other zones,
    # and a different instant asked between two askings of one, each get their own.
    first = datetime(2026, 10, 25, 0, 59, 59, tzinfo=UTC)
    same_in_berlin = first.astimezone(BERLIN)
    later = first + timedelta(seconds=1)
    for instant in (first, first, same_in_berlin, later, first, later.astimezone(BERLIN), later):
        assert epoch_of(instant) == instant.timestamp()
    assert epoch_of(first) == 1792889999.0 and epoch_of(later) == 1792890000.0
