"""Client states, profile data, invitations and visit days on the pure core."""

from __future__ import annotations

import json
from datetime import date, datetime

import pytest

from config.loading import DEFAULT_CONFIG, parse_config
from models.engine import apply_customer_event, apply_receipt, set_status
from models.errors import InvalidInput
from models.events import OutputKind
from models.inputs import CustomerEvent, parse_customer_event
from models.schema import ClientState
from models.state import CustomerState
from tests.unit.test_engine import CONFIG, changes, message, sale

NOW = datetime.fromisoformat("2026-11-22T12:00:00+00:00")

# "Invite a friend and get Silver, three friends and get Gold" and "come on more than 3 days"
# as configuration: two extra systems next to the shipped ones.
EXTRA_SYSTEMS = """
  - id: friends
    name: Friends invited per month
    counter: friends_invited
    period: month
    downgrade: never
    levels:
      - {id: member, name: Member}
      - {id: silver, name: Silver, above: 0}
      - {id: gold, name: Gold, above: 2}
  - id: visits
    name: Visit days per month
    counter: visit_days
    period: month
    downgrade: recompute
    levels:
      - {id: visitor, name: Visitor}
      - {id: regular, name: Regular, above: 3}
"""


def extended_config():
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    head, tail = text.split("\noffers:", 1)
    return parse_config(head.rstrip("\n") + "\n" + EXTRA_SYSTEMS + "\noffers:" + tail)


EXTENDED = extended_config()


def event(event_id: str, kind: str, at: str = "2026-11-02T10:00:00+01:00", customer: str = "C-1", **extra):
    return CustomerEvent(
        event_id=event_id, type=kind, customer_id=customer, occurred_at=datetime.fromisoformat(at), **extra
    )


def run(state, events, config=CONFIG):
    result = None
    for item in events:
        result = (apply_customer_event if isinstance(item, CustomerEvent) else apply_receipt)(state, item, config)
        state = result.state
    return state, result


def snapshot(result):
    (view,) = [o.value for o in result.outputs if o.kind is OutputKind.CUSTOMER_STATUS]
    return view


def test_registration_makes_a_registered_member_with_first_levels_and_profile():
    state, result = run(None, [event("E-1", "registered", birth_date=date(1990, 11, 25))])
    assert state.client_state is ClientState.REGISTERED
    assert state.birth_date == "1990-11-25"
    assert state.registered_at == "2026-11-02T10:00:00+01:00"
    assert [(c["status_system"], c["current"], c["reason"]) for c in changes(result)] == [
        ("monthly_amount", "bronze", "initial"),
        ("monthly_count", "basic", "initial"),
    ]
    view = snapshot(result)
    assert view["client_state"] == "registered" and view["birth_date"] == "1990-11-25"


def test_anonymous_then_registered_keeps_the_first_registration_date():
    state, _ = run(
        None,
        [
            event("E-1", "anonymous_registered"),
            event("E-2", "registered", at="2026-11-05T10:00:00+01:00"),
            event("E-3", "registered", at="2026-11-09T10:00:00+01:00"),
        ],
    )
    assert state.client_state is ClientState.REGISTERED
    assert state.registered_at == "2026-11-05T10:00:00+01:00"


@pytest.mark.parametrize(
    ("start", "kind"),
    [
        (ClientState.REGISTERED, "anonymous_registered"),
        (ClientState.EXCLUDED, "registered"),
        (ClientState.EXCLUDED, "profile_updated"),
        (ClientState.EXCLUDED, "friend_invited"),
        (ClientState.DELETED, "registered"),
        (ClientState.DELETED, "excluded"),
        (None, "profile_updated"),
        (None, "friend_invited"),
    ],
)
def test_forbidden_transitions_are_refused_with_the_reason(start, kind):
    state = None if start is None else CustomerState(customer_id="C-1", client_state=start)
    with pytest.raises(InvalidInput, match=f"{kind} is not allowed for a customer who is"):
        apply_customer_event(state, event("E-9", kind, invitee_id="C-2"), CONFIG)


def test_a_resent_event_applies_once():
    state, _ = run(None, [event("E-1", "registered")])
    config = EXTENDED
    state, _ = run(state, [event("I-1", "friend_invited", invitee_id="C-2")], config)
    again = apply_customer_event(state, event("I-1", "friend_invited", invitee_id="C-2"), config)
    assert again.duplicate
    assert state.systems["friends"].friends == 1


def test_one_invited_friend_is_silver_and_three_are_gold_next_month():
    config = EXTENDED
    invites = [event(f"I-{n}", "friend_invited", at=f"2026-11-{n + 2:02d}T10:00:00+01:00") for n in range(3)]
    state, _ = run(None, [event("E-1", "registered"), *invites], config)
    assert state.systems["friends"].friends == 3
    _, result = run(state, [sale("R-1", "2026-12-01T09:00:00+01:00", "5.00", customer="C-1")], config)
    assert [(c["previous"], c["current"], c["counter"]) for c in changes(result, "friends")] == [
        ("member", "gold", "3")
    ]

    one, _ = run(None, [event("E-1", "registered"), invites[0]], config)
    _, result = run(one, [sale("R-1", "2026-12-01T09:00:00+01:00", "5.00", customer="C-1")], config)
    assert [c["current"] for c in changes(result, "friends")] == ["silver"]


def test_visit_days_count_distinct_local_days():
    config = EXTENDED
    receipts = [
        sale("R-1", "2026-11-03T09:00:00+01:00", "5.00", customer="C-1"),
        sale("R-2", "2026-11-03T20:00:00+01:00", "5.00", customer="C-1"),  # same day
        sale("R-3", "2026-11-03T23:30:00+00:00", "5.00", customer="C-1"),  # 4 November in Berlin
        sale("R-4", "2026-11-10T09:00:00+01:00", "5.00", customer="C-1"),
        sale("R-5", "2026-11-11T09:00:00+01:00", "5.00", customer="C-1"),
    ]
    state, _ = run(None, receipts, config)
    assert len(state.systems["visits"].days) == 4
    _, result = run(state, [sale("R-6", "2026-12-01T09:00:00+01:00", "5.00", customer="C-1")], config)
    assert [(c["current"], c["counter"]) for c in changes(result, "visits")] == [("regular", "4")]


def test_visit_days_stay_distinct_and_in_order_when_receipts_come_out_of_order():
    config = EXTENDED
    days = ["2026-11-10", "2026-11-03", "2026-11-10", "2026-11-05", "2026-11-03", "2026-11-12"]
    receipts = [sale(f"R-{n}", f"{day}T09:00:00+01:00", "5.00", customer="C-1") for n, day in enumerate(days)]
    state, _ = run(None, receipts, config)
    assert [date.fromordinal(d).isoformat() for d in state.systems["visits"].days] == [
        "2026-11-03",
        "2026-11-05",
        "2026-11-10",
        "2026-11-12",
    ]


def test_a_late_invitation_corrects_the_closed_month():
    config = EXTENDED
    state, _ = run(
        None,
        [
            event("E-1", "registered", at="2026-10-30T10:00:00+01:00"),
            sale("R-1", "2026-11-01T09:00:00+01:00", "5.00", customer="C-1"),  # closes October: member
            event("I-1", "friend_invited", at="2026-10-31T18:00:00+01:00", invitee_id="C-2"),
        ],
        config,
    )
    assert state.systems["friends"].level == "silver"
    assert state.systems["friends"].reason == "late_receipt"


def test_exclusion_erases_personal_data_and_later_purchases_are_anonymous():
    state, _ = run(
        None,
        [
            event("E-1", "registered", birth_date=date(1990, 11, 25)),
            sale("R-1", "2026-11-03T09:00:00+01:00", "50.00", customer="C-1"),
        ],
    )
    state, result = run(state, [event("X-1", "excluded", at="2026-11-04T10:00:00+01:00")])
    assert state.client_state is ClientState.EXCLUDED
    assert state.birth_date is None and state.registered_at is None and not state.receipts
    view = snapshot(result)
    assert view["client_state"] == "excluded" and view["statuses"] == []
    assert "birth_date" not in view and view["erased_receipts"] == ["R-1"]
    assert "1990" not in state.to_bytes().decode()

    after = apply_receipt(state, sale("R-2", "2026-11-05T09:00:00+01:00", "80.00", customer="C-1"), CONFIG)
    assert [o.kind for o in after.outputs] == [OutputKind.RECEIPT_MESSAGE]
    assert message(after)["customer_id"] is None
    assert after.state.systems["monthly_amount"].amount == 50  # not counted


def test_only_an_exclusion_s_snapshot_says_it_erases_and_asking_makes_no_lazy_snapshot():
    state, _ = run(None, [event("E-1", "registered")])
    state, bought = run(state, [sale("R-1", "2026-11-03T09:00:00+01:00", "50.00", customer="C-1")])
    (later,) = [o for o in bought.outputs if o.kind is OutputKind.CUSTOMER_STATUS]
    assert not later.erases and not later.made  # the live pipeline may coalesce it away unread
    state, excluded = run(state, [event("X-1", "excluded", at="2026-11-04T10:00:00+01:00")])
    (erasing,) = [o for o in excluded.outputs if o.kind is OutputKind.CUSTOMER_STATUS]
    assert erasing.erases


def test_excluding_an_unknown_customer_is_remembered():
    state, _ = run(None, [event("X-1", "excluded")])
    assert state.client_state is ClientState.EXCLUDED


def test_state_round_trips_with_profile_and_new_counters():
    config = EXTENDED
    state, _ = run(
        None,
        [
            event("E-1", "registered", birth_date=date(2000, 2, 29)),
            event("I-1", "friend_invited", invitee_id="C-2"),
            sale("R-1", "2026-11-03T09:00:00+01:00", "5.00", customer="C-1"),
        ],
        config,
    )
    assert CustomerState.from_bytes(state.to_bytes()) == state


BASE = {"event_id": "E", "type": "registered", "customer_id": "C", "occurred_at": "2026-11-01T10:00:00+01:00"}


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"type": "married"}, "unknown customer event"),
        ({"occurred_at": "2026-11-01T10:00:00"}, "no UTC offset"),
        ({"customer_id": None}, "customer_id: required"),
        ({"type": "card_linked"}, "card_number: required"),
        ({"type": "friend_invited"}, "invitee_id: required"),
        ({"birth_date": "1990-02-30"}, "birth_date"),
        ({"birth_date": 19900230}, "birth_date"),
        ({"occurred_at": "2029-11-01T10:00:00+01:00"}, "ahead"),
        ({"event_id": 7}, "event_id: must be a string"),
    ],
)
def test_malformed_customer_events_are_refused_naming_the_field(changes, error):
    with pytest.raises(InvalidInput, match=error):
        parse_customer_event(json.dumps({**BASE, **changes}), CONFIG, NOW)


def test_no_status_can_be_set_for_an_excluded_customer():
    from models.inputs import SetStatus

    state, _ = run(None, [event("X-1", "excluded")])
    command = SetStatus(
        command_id="CC-1",
        customer_id="C-1",
        status_system="monthly_amount",
        status="gold",
        valid_until=None,
        reason=None,
        operator="agent-1",
        source="manual",
        requested_at=NOW,
    )
    with pytest.raises(InvalidInput, match="C-1 is excluded"):
        set_status(state, command, CONFIG)
