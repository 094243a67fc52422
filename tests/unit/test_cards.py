"""Cards: issue, link, block; the temporary owner merged into the member."""

from __future__ import annotations

from datetime import datetime

import pytest

from models.cards import CardState, apply_card_event, owner_of
from models.engine import apply_customer_event, merge_away, merge_into
from models.errors import InvalidInput
from models.schema import ClientState
from models.state import CustomerState
from tests.unit.test_engine import CONFIG, changes, sale
from tests.unit.test_lifecycle import event, run


def card_event(event_id: str, kind: str, customer: str, card: str = "7000001", at: str = "2026-11-02T10:00:00+01:00"):
    return event(event_id, kind, at=at, customer=customer, card_number=card)


def test_issue_then_link_moves_the_card_and_merges_the_temporary_owner():
    issued = apply_card_event(None, card_event("K-1", "card_issued", "TMP-1"))
    assert issued.card == CardState("7000001", "TMP-1", temporary=True, events=("K-1",))
    assert [(r.kind, r.customer_id) for r in issued.routes] == [("customer_event", "TMP-1")]
    assert owner_of(issued.card) == "TMP-1"

    linked = apply_card_event(issued.card, card_event("K-2", "card_linked", "C-1"))
    assert linked.card is not None and (linked.card.owner, linked.card.temporary) == ("C-1", False)
    assert [(r.kind, r.customer_id, r.into) for r in linked.routes] == [
        ("customer_event", "C-1", None),
        ("merge_away", "TMP-1", "C-1"),
    ]
    again = apply_card_event(linked.card, card_event("K-2", "card_linked", "C-1"))
    assert again.duplicate and not again.routes


@pytest.mark.parametrize(
    ("events", "error"),
    [
        ([("card_linked", "C-1")], "never issued"),
        ([("card_issued", "TMP-1"), ("card_issued", "TMP-2")], "already issued"),
        ([("card_issued", "TMP-1"), ("card_blocked", "TMP-1"), ("card_linked", "C-1")], "blocked"),
        ([("card_issued", "TMP-1"), ("card_linked", "C-1"), ("card_linked", "C-2")], "already belongs to member C-1"),
    ],
)
def test_only_issued_unblocked_unowned_cards_can_be_linked(events, error):
    card = None
    *before, (last_kind, last_customer) = events
    for n, (kind, customer) in enumerate(before):
        card = apply_card_event(card, card_event(f"K-{n}", kind, customer)).card
    with pytest.raises(InvalidInput, match=error):
        apply_card_event(card, card_event("K-last", last_kind, last_customer))


def test_a_blocked_card_resolves_to_no_one_until_unblocked():
    card = apply_card_event(None, card_event("K-1", "card_issued", "TMP-1")).card
    card = apply_card_event(card, card_event("K-2", "card_blocked", "TMP-1")).card
    assert owner_of(card) is None
    card = apply_card_event(card, card_event("K-3", "card_unblocked", "TMP-1")).card
    assert owner_of(card) == "TMP-1"
    assert owner_of(None) is None
    assert CardState.from_bytes(card.to_bytes()) == card


def test_card_issued_makes_a_new_customer_holding_the_card():
    state, _ = run(None, [card_event("K-1", "card_issued", "TMP-1")])
    assert state.client_state is ClientState.NEW and state.cards == ["7000001"]


def test_merged_counters_add_up_and_the_temporary_owner_is_deleted():
    at = datetime.fromisoformat("2026-11-20T10:00:00+01:00")
    temporary, _ = run(
        None,
        [
            card_event("K-1", "card_issued", "TMP-1"),
            sale("R-1", "2026-11-03T09:00:00+01:00", "80.00", customer="TMP-1"),
            sale("R-2", "2026-11-04T09:00:00+01:00", "30.00", customer="TMP-1"),
        ],
    )
    member, _ = run(
        None,
        [
            event("E-1", "registered", customer="C-1"),
            sale("R-3", "2026-11-05T09:00:00+01:00", "100.00", customer="C-1"),
        ],
    )
    gone, donor = merge_away(temporary, "TMP-1", "C-1", "K-2", at, CONFIG)
    assert gone.state.client_state is ClientState.DELETED and gone.state.merged_into == "C-1"
    merged = merge_into(member, CustomerState.from_bytes(donor), "C-1", "K-2", at, CONFIG)
    amount = merged.state.systems["monthly_amount"]
    assert (amount.amount, amount.count) == (210, 3)
    assert {"R-1", "R-2", "R-3"} <= merged.state.receipts.keys()
    # The counters decide at the close: 210.00 in November is Gold for December.
    _, december = run(merged.state, [sale("R-4", "2026-12-01T09:00:00+01:00", "1.00", customer="C-1")])
    assert [c["current"] for c in changes(december, "monthly_amount")] == ["gold"]
    # A resent receipt of the temporary owner is recognised by the member.
    assert run(merged.state, [sale("R-1", "2026-11-03T09:00:00+01:00", "80.00", customer="C-1")])[1].duplicate
    # Merging the same donor again adds nothing.
    assert merge_into(merged.state, CustomerState.from_bytes(donor), "C-1", "K-2", at, CONFIG).duplicate


def test_a_merge_that_changes_the_closed_months_level_emits_a_merge_change():
    at = datetime.fromisoformat("2026-11-02T10:00:00+01:00")
    temporary, _ = run(None, [sale("R-1", "2026-10-03T09:00:00+02:00", "150.00", customer="TMP-1")])
    member, _ = run(
        None,
        [
            sale("R-2", "2026-10-05T09:00:00+02:00", "10.00", customer="C-1"),
            sale("R-3", "2026-11-01T09:00:00+01:00", "10.00", customer="C-1"),  # closes October: bronze
        ],
    )
    _, donor = merge_away(temporary, "TMP-1", "C-1", "K-2", at, CONFIG)
    merged = merge_into(member, CustomerState.from_bytes(donor), "C-1", "K-2", at, CONFIG)
    (change,) = changes(merged, "monthly_amount")
    assert (change["previous"], change["current"], change["reason"], change["counter"], change["period"]) == (
        "bronze",
        "silver",
        "merge",
        "160.00",
        "2026-10",
    )


def test_a_deleted_customer_cannot_come_back():
    gone, _ = merge_away(None, "TMP-1", "C-1", "K-2", datetime.fromisoformat("2026-11-02T10:00:00+01:00"), CONFIG)
    with pytest.raises(InvalidInput, match="not allowed for a customer who is deleted"):
        apply_customer_event(gone.state, event("E-1", "registered", customer="TMP-1"), CONFIG)


def test_an_exclusion_releases_only_cards_that_still_name_the_customer():
    from models.cards import release

    card = apply_card_event(None, card_event("K-1", "card_issued", "TMP-1")).card
    card = apply_card_event(card, card_event("K-2", "card_linked", "C-1")).card
    assert release(card, "C-1")
    assert not release(card, "TMP-1")
    assert not release(None, "C-1")
