"""Event ids: the fast form must give exactly the UUIDv5 ids earlier versions published."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from models import events


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_event_id_is_the_uuid5_of_the_cause(cause: list[str]) -> None:
    # Ids already in sinks and topics must stay the same across an upgrade, or a
    # replayed input would be stored twice.
    assert events.event_id(*cause) == str(uuid.uuid5(events._NAMESPACE, "|".join(cause)))


def test_an_id_published_before_stays_the_same() -> None:
    # Computed with the version that built ids with uuid.uuid5.
    assert events.event_id("status-change", "C-1", "monthly_amount", "POS1-1") == "82e1ebd1-d781-5f77-b9cc-90cb532f1537"


def test_an_instant_is_written_as_isoformat_writes_it_whichever_came_before() -> None:
    # `events.instant_text` keeps the last instant's text: an equal instant in another object, one in
    # another zone, and the first one again after another each get their own text.
    first = datetime(2026, 3, 29, 1, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    same_moment_elsewhere = first.astimezone(UTC)
    later = first + timedelta(hours=1)  # across the spring-forward gap
    for when in (first, first, same_moment_elsewhere, later, first):
        assert events.instant_text(when) == when.isoformat()
