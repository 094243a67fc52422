"""A replay split by customer (models/shards.py, streams/history/shards.py) adds up to the replay in one piece."""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
import signal
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from models import shards
from models.events import OfferTrigger
from models.history import HistoryRecord, Replayer, Source, packed
from models.schema import LoyaltyConfig
from models.shards import SplitFailed, combine, latest_receipts, planned, rebuild, replay_shard, routing
from streams.envelope import partition_for
from streams.history import shards as streams_shards
from streams.history.reading import within
from streams.history.shards import rebuild_state
from tests.reference import DEFAULT_PARTITIONS

BERLIN = ZoneInfo("Europe/Berlin")
END = datetime(2027, 1, 1, 2, tzinfo=BERLIN)


def partitioner(key: str) -> int:
    return partition_for(key, DEFAULT_PARTITIONS)


def record(source: Source, value: dict[str, Any] | bytes, at: datetime, delay: float = 1.0) -> HistoryRecord:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return HistoryRecord(source, raw, at.timestamp() + delay)


def sale(receipt_id: str, at: datetime, total: str, **who: str) -> HistoryRecord:
    value = {"receipt_id": receipt_id, "type": "sale", "pos_id": "P1", "issued_at": at.isoformat()}
    return record(Source.RECEIPTS, value | {"currency": "EUR", "total": total, **who}, at)


def event(event_id: str, kind: str, customer_id: str, at: datetime, **extra: str) -> HistoryRecord:
    value = {"event_id": event_id, "type": kind, "customer_id": customer_id, "occurred_at": at.isoformat()}
    return record(Source.CUSTOMER_EVENTS, value | extra, at)


def command(value: dict[str, Any], at: datetime) -> HistoryRecord:
    return record(Source.STATUS_COMMANDS, value, at)


def history(seed: int, inputs: int = 3000, *, tricky: bool = True) -> list[HistoryRecord]:
    """Three months of everything a replay meets: card-only receipts, temporary owners merged
    into members, receipts for a customer merged away, exclusions that release cards, resends,
    refused inputs, manual statuses, closes and campaign runs. Only `tricky` ones have the
    receipts that no shard but their owner reads right: for a customer merged away, and
    refused ones right at a period's end."""
    rng = random.Random(seed)
    start = datetime(2026, 10, 1, 8, tzinfo=BERLIN)
    step = (END - start - timedelta(days=1)) / inputs
    members = [f"M-{n}" for n in range(40)]
    out: list[HistoryRecord] = []
    for n, member in enumerate(members):
        born = {"birth_date": f"19{60 + n}-1{n % 3}-{10 + n % 18}"} if n % 2 else {}
        out.append(event(f"reg-{member}", "registered", member, start - timedelta(days=400), **born))
    temporary: dict[str, str] = {}  # card -> its temporary owner, until linked
    owner: dict[str, str] = {}  # card -> who holds it now
    sent: list[HistoryRecord] = []
    for n in range(inputs):
        at = start + step * n
        roll = rng.random()
        if roll < 0.55:
            who = {"customer_id": rng.choice(members)}
            if owner and rng.random() < 0.3:
                who = {"card_number": rng.choice(sorted(owner))}
            out.append(
                sale(f"R{n}", at - timedelta(minutes=rng.choice((0, 0, 0, 90))), f"{rng.randint(1, 140)}.50", **who)
            )
            sent.append(out[-1])
        elif roll < 0.62 and sent:
            out.append(rng.choice(sent[-50:]))  # a till's resend
        elif roll < 0.68:
            card = f"C{n}"
            temporary[card] = owner[card] = f"TMP-{n}"
            out.append(event(f"E{n}", "card_issued", owner[card], at, card_number=card))
        elif roll < 0.73 and temporary:
            card = rng.choice(sorted(temporary))
            member = rng.choice(members)
            owner[card] = member
            out.append(event(f"E{n}", "card_linked", member, at, card_number=card))
            merged = temporary.pop(card)
            if tricky and rng.random() < 0.5:  # the merged-away temporary owner buys under its own id again
                out.append(sale(f"R{n}-late", at + timedelta(minutes=5), "80.00", customer_id=merged))
        elif roll < 0.75 and owner:
            card = rng.choice(sorted(owner))
            out.append(event(f"E{n}", "excluded", owner.pop(card), at))
            temporary.pop(card, None)
        elif roll < 0.80:
            bad = rng.choice(
                (
                    b"not json",
                    json.dumps({"receipt_id": f"B{n}", "customer_id": rng.choice(members), "total": "x"}).encode(),
                )
            )
            out.append(record(Source.RECEIPTS, bad, at))
        elif roll < 0.83:
            future = at + timedelta(days=3)  # refused: too far ahead of the clock
            out.append(
                record(Source.RECEIPTS, json.loads(sale(f"F{n}", future, "5.00", customer_id=members[0]).value), at)
            )
        elif roll < 0.86:
            member = rng.choice(members)
            out.append(
                command(
                    {
                        "command_id": f"S{n}",
                        "type": "set_status",
                        "customer_id": member,
                        "status_system": "monthly_amount",
                        "status": rng.choice(("silver", "gold")),
                    },
                    at,
                )
            )
        elif roll < 0.87:
            out.append(command({"command_id": f"K{n}", "type": "run_campaigns", "date": at.date().isoformat()}, at))
        else:
            out.append(event(f"E{n}", "profile_updated", rng.choice(members), at))
    if not tricky:
        return sorted(out, key=lambda r: r.timestamp)
    # At each month's end, refused and redirected receipts are the first past the frontier's threshold.
    for month_end in (datetime(2026, 11, 1, tzinfo=BERLIN), datetime(2026, 12, 1, tzinfo=BERLIN)):
        at = month_end + timedelta(hours=1, seconds=1)
        refused = {"receipt_id": f"Z-{month_end:%m}", "customer_id": "M-1", "issued_at": at.isoformat()}  # no total
        out.append(record(Source.RECEIPTS, refused, at, 0.0))
    out.sort(key=lambda r: r.timestamp)
    return out


def in_one_piece(config: LoyaltyConfig, records: list[HistoryRecord], until: datetime | None = END) -> Replayer:
    replayer = Replayer(config, partitioner, DEFAULT_PARTITIONS)
    for item in records:
        replayer.feed(item)
    if until is not None:
        replayer.finish(until)
    return replayer


def one_after_another(tasks: Sequence[Callable[[], Any]]) -> list[Any]:
    return [task() for task in tasks]


def picture(replayer: Replayer) -> tuple[Any, ...]:
    """Everything a replay rebuilds, as the changelog would store it."""
    return (
        {c: s.to_bytes() for c, s in replayer.states.items()},
        {n: c.to_bytes() for n, c in replayer.cards.items()},
        {p: f.to_bytes() for p, f in replayer.frontiers.items()},
        replayer.refused,
        replayer.inputs,
    )


def test_a_replay_that_makes_only_what_the_states_keep_rebuilds_the_same_states(config: LoyaltyConfig) -> None:
    records = history(7)
    whole = in_one_piece(config, records)
    lean = Replayer(config, partitioner, DEFAULT_PARTITIONS, state_only=True)
    made = [o for item in records for o in lean.feed(item)] + lean.finish(END)
    assert picture(lean) == picture(whole)  # the receipt messages the states keep included
    assert sum(1 for s in whole.states.values() for r in s.receipts.values() if r.message_event) > 100
    purchase = {offer.id for offer in config.offers if offer.trigger == "purchase"}
    assert not [o for o in made if isinstance(o, OfferTrigger) and o.offer_id in purchase]
    full = Replayer(config, partitioner, DEFAULT_PARTITIONS)
    made = [o for item in records for o in full.feed(item)]
    assert sum(1 for o in made if isinstance(o, OfferTrigger) and o.offer_id in purchase) > 100


@pytest.mark.parametrize(
    ("seed", "shards", "tricky"),
    [(1, 2, True), (2, 2, True), (3, 3, True), (4, 2, False), (5, 4, False), (6, 3, False)],
)
def test_the_shards_add_up_to_the_replay_in_one_piece(
    config: LoyaltyConfig, seed: int, shards: int, tricky: bool
) -> None:
    records = history(seed, tricky=tricky)
    whole = in_one_piece(config, records)
    split, rounds, _ = rebuild(config, records, partitioner, DEFAULT_PARTITIONS, shards, one_after_another, END)
    assert picture(split) == picture(whole)
    assert rounds == (2 if tricky else 1)  # the guesses held but for the tricky receipts
    # The history has what makes a split hard, or the test would prove nothing.
    assert sum(1 for s in whole.states.values() if s.merged_into) > 3
    assert whole.refused > 20
    assert sum(1 for s in whole.states.values() if s.systems.get("monthly_amount")) > 30
    # The frontiers moved, and closed every customer still in the programme up to them.
    assert {p: f.periods["monthly_amount"] for p, f in whole.frontiers.items()} == dict.fromkeys(range(4), "2027-01")
    members = [
        s
        for s in whole.states.values()
        if "monthly_amount" in s.systems and s.client_state.value in ("new", "registered")
    ]
    assert len(members) > 20
    assert all(s.systems["monthly_amount"].period == "2027-01" for s in members)


def test_a_receipt_only_its_owner_reads_right_runs_a_second_round(config: LoyaltyConfig) -> None:
    """A temporary owner merged away still buys under its own id: the purchase counts for the
    member and moves the member's partition's frontier, which no other shard can tell."""
    temporary, member = next(
        (t, m) for t, m in ((f"TMP-{n}", f"M-{n}") for n in range(100)) if partitioner(t) != partitioner(m)
    )
    shards, october = 2, datetime(2026, 10, 5, 12, tzinfo=BERLIN)
    cards = [
        event("E1", "card_issued", temporary, october, card_number="7001"),
        event("E2", "card_linked", member, october + timedelta(hours=1), card_number="7001"),
    ]
    routes = routing(packed(cards), config, shards)
    bystander = next(  # of the member's partition, on the other shard: only R3 can close its October
        b
        for b in (f"B-{n}" for n in range(1000))
        if partitioner(b) == partitioner(member) and routes.shard(b) != routes.shard(member)
    )
    records = [
        *cards,
        sale("R1", october + timedelta(hours=2), "150.00", customer_id=bystander),
        sale("R2", october + timedelta(hours=3), "10.00", customer_id=temporary),  # counts for the member
        sale("R3", datetime(2026, 11, 1, 1, 0, 1, tzinfo=BERLIN), "10.00", customer_id=temporary),
    ]
    whole = in_one_piece(config, records, until=None)
    assert whole.states[bystander].systems["monthly_amount"].period == "2026-11"  # R3 closed October for it

    history = packed(records)
    plan = planned(history, config, shards, one_after_another)
    first = [replay_shard(config, history, partitioner, DEFAULT_PARTITIONS, plan, k, {}) for k in range(shards)]
    assert any(r.effective for r in first)
    assert len({r.frontiers for r in first}) == 2  # the guess alone left the other shard's frontier behind
    with pytest.raises(SplitFailed, match="frontiers differ"):
        combine(config, partitioner, DEFAULT_PARTITIONS, first, len(records))

    split, rounds, _ = rebuild(config, records, partitioner, DEFAULT_PARTITIONS, shards, one_after_another)
    assert rounds == 2
    assert picture(split) == picture(whole)


def test_a_history_split_across_processes_equals_the_replay_in_one(config: LoyaltyConfig) -> None:
    records = history(7, inputs=30_000)
    whole = in_one_piece(config, records)
    rebuilt = rebuild_state(config, records, partitioner, DEFAULT_PARTITIONS, workers=2, until=END)
    assert rebuilt.workers == 2
    assert picture(rebuilt.replayer) == picture(whole)


def _encoded(replayer: Replayer) -> dict[str, bytes]:
    return {c: s.to_bytes() for c, s in replayer.states.items()}


@pytest.mark.parametrize("workers", [1, 2])
def test_what_settle_makes_of_each_process_customers_adds_up_to_the_states_in_one_piece(
    config: LoyaltyConfig, workers: int
) -> None:
    """`loyalty replay` encodes each process's customers where they were rebuilt (`settle`); the
    processes' shares hold each customer once, as the replay in one piece rebuilds it."""
    records = history(8, inputs=30_000)
    whole = in_one_piece(config, records)
    rebuilt = rebuild_state(config, records, partitioner, DEFAULT_PARTITIONS, workers, END, settle=_encoded)
    assert rebuilt.workers == workers and len(rebuilt.settled) == workers
    shares: dict[str, bytes] = {}
    for share in rebuilt.settled:
        assert not shares.keys() & share.keys()  # each customer in one process's share
        shares.update(share)
    assert shares == _encoded(whole)
    if workers > 1:
        assert not rebuilt.replayer.states  # nothing sent back but the shares
    assert picture(rebuilt.replayer)[1:] == picture(whole)[1:]  # cards, frontiers and counts as before


class _Unreadable:
    """An answer that pickles but cannot be read back."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return (_refuse, ())


def _refuse() -> None:
    raise ValueError("this answer cannot be read")


class _Hung(Exception):
    pass


def test_an_answer_that_cannot_be_read_fails_the_split_without_waiting_on_the_other_children() -> None:
    # The second child's answer is bigger than a pipe holds, so it blocks sending until read;
    # joining it without ending it first would wait for ever. An alarm turns that into a failure.
    # (Not an OSError: multiprocessing takes one out of waiting for a child as "not started yet".)
    def on_alarm(signum: int, frame: object) -> None:
        raise _Hung("forked waited on a child after an answer could not be read")

    before = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(60)
    try:
        with pytest.raises(ValueError, match="cannot be read"):
            streams_shards.forked([_Unreadable, lambda: bytes(4 << 20)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def test_a_shards_result_and_a_history_record_travel_between_processes_whole(config: LoyaltyConfig) -> None:
    record = HistoryRecord(Source.RECEIPTS, b'{"receipt_id": "r-1"}', 1_700_000_000.25)
    assert pickle.loads(pickle.dumps(record)) == record
    records = packed(history(9, inputs=300))
    plan = planned(records, config, 2, one_after_another)
    replayed = replay_shard(config, records, partitioner, DEFAULT_PARTITIONS, plan, 0, {}, until=END)
    assert replayed.states and replayed.frontiers
    # Every field away from its default and unlike its neighbours: one left out, or two swapped, shows.
    result = dataclasses.replace(
        replayed,
        cards=[("7001", b"card")],
        refused=7,
        mismatches={5: (END, ((1, END, "R-5"),))},
        effective=True,
        strays=["C-stray"],
        remade=True,
    )
    assert pickle.loads(pickle.dumps(result)) == result


def test_a_small_history_is_replayed_in_this_process(config: LoyaltyConfig) -> None:
    records = history(8, inputs=200)
    rebuilt = rebuild_state(config, records, partitioner, DEFAULT_PARTITIONS, workers=2, until=END)
    assert (rebuilt.workers, rebuilt.rounds) == (1, 1)
    assert picture(rebuilt.replayer) == picture(in_one_piece(config, records))


def test_the_shards_get_about_as_many_receipts_when_a_few_customers_make_most(config: LoyaltyConfig) -> None:
    start = datetime(2026, 11, 2, 9, tzinfo=UTC)
    heavy = {"C-1": 3000, "C-2": 2000, "C-3": 1000}
    who = [c for c, n in heavy.items() for _ in range(n)] + [f"L-{n}" for n in range(4000)]
    random.Random(5).shuffle(who)
    records = [sale(f"R-{n}", start + timedelta(seconds=n), "5.00", customer_id=c) for n, c in enumerate(who)]
    plan = planned(packed(records), config, 2, one_after_another)
    counts = [plan.owners.count(shard) for shard in (0, 1)]
    assert abs(counts[0] - counts[1]) < 100, counts  # 5,000 each but for one bucket's few light customers
    assert plan.routes.shard("C-1") != plan.routes.shard("C-2")
    plain = shards.Routing(2, {})  # a bucket's shard by its number alone
    by_hash = [sum(1 for c in who if plain.shard(c) == shard) for shard in (0, 1)]
    assert abs(by_hash[0] - by_hash[1]) > 1000, by_hash  # what the dealing is for
    for record, owner in zip(records, plan.owners, strict=True):  # the plan's routes say the same
        assert plan.routes.shard(json.loads(record.value)["customer_id"]) == owner


def test_every_customer_of_a_card_lands_on_the_cards_shard(config: LoyaltyConfig) -> None:
    at = datetime(2026, 10, 1, tzinfo=UTC)
    records = [
        event("E1", "card_issued", "TMP-1", at, card_number="1"),
        event("E2", "card_linked", "M-1", at, card_number="1"),
        event("E3", "card_issued", "M-1", at, card_number="2"),
        event("E4", "card_linked", "M-2", at, card_number="2"),
    ]
    routes = routing(packed(records), config, 7)
    assert len({routes.shard(k) for k in ("TMP-1", "M-1", "M-2", "card:1", "card:2")}) == 1


def test_another_shards_receipt_that_starts_a_day_runs_its_campaigns_before_a_late_one(
    config: LoyaltyConfig,
) -> None:
    """November 24th is the first at-risk day (the default `at_risk_days: 7`). Its run must see the
    member before a receipt of the 23rd that arrives after another shard's first receipt of the 24th."""
    shards = 2
    member = "M-1"
    routes = routing(packed([]), config, shards)
    other = next(c for c in (f"X-{n}" for n in range(1000)) if routes.shard(c) != routes.shard(member))
    late = sale("R3", datetime(2026, 11, 23, 23, 50, tzinfo=BERLIN), "200.00", customer_id=member)
    # A customer in every partition buys in each month, so every frontier is in November and
    # receipts far from its end are quiet: another shard's are not even read.
    firsts = {partitioner(c): c for c in (f"F-{n}" for n in range(200))}
    october = datetime(2026, 10, 1, 12, tzinfo=BERLIN)
    records = [
        *(sale(f"F{p}", october, "1.00", customer_id=c) for p, c in sorted(firsts.items())),
        *(sale(f"G{p}", october + timedelta(days=32), "1.00", customer_id=c) for p, c in sorted(firsts.items())),
        sale("R1", datetime(2026, 10, 10, 12, tzinfo=BERLIN), "150.00", customer_id=member),  # Silver for November
        sale("R2", datetime(2026, 11, 2, 12, tzinfo=BERLIN), "10.00", customer_id=member),  # at risk of Bronze
        sale("X1", datetime(2026, 11, 24, 0, 5, tzinfo=BERLIN), "5.00", customer_id=other),  # starts the 24th
        HistoryRecord(late.source, late.value, datetime(2026, 11, 24, 0, 10, tzinfo=BERLIN).timestamp()),
        sale("X2", datetime(2026, 11, 25, 9, tzinfo=BERLIN), "5.00", customer_id=other),
    ]
    whole = in_one_piece(config, records, until=None)
    assert "at_risk:monthly_amount:2026-11" in whole.states[member].granted  # run before R3 counted
    split, _, _ = rebuild(config, records, partitioner, DEFAULT_PARTITIONS, shards, one_after_another)
    assert picture(split) == picture(whole)


def test_a_split_that_does_not_hold_is_replayed_in_one_process(
    config: LoyaltyConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    records = history(9, inputs=1000)
    run = streams_shards._noted

    def surveyed_wrong(tasks: Sequence[Callable[[], Any]]) -> list[Any]:
        # Every receipt surveyed into one bucket: its shard rebuilds customers that route to the
        # other. (The survey's answers are changed, not its code: the core may run compiled.)
        answers = run(tasks)
        return [a._replace(buckets=bytes(len(a.buckets))) if isinstance(a, shards.Surveyed) else a for a in answers]

    monkeypatch.setattr(streams_shards, "_noted", surveyed_wrong)
    rebuilt = rebuild_state(config, records, partitioner, DEFAULT_PARTITIONS, workers=2, until=END, min_split=0)
    assert (rebuilt.workers, rebuilt.rounds) == (1, 1)
    assert "rebuilt outside their shard" in caplog.text
    assert picture(rebuilt.replayer) == picture(in_one_piece(config, records))


def test_a_shard_makes_the_receipt_messages_of_each_customers_latest_receipts_only(config: LoyaltyConfig) -> None:
    at = datetime(2026, 11, 2, 9, tzinfo=BERLIN)
    records = [sale(f"A{n}", at + timedelta(hours=n), "5.00", customer_id="A") for n in range(8)]
    records.insert(6, records[5])  # A5 resent at once: one receipt, not two
    records += [
        event("E1", "card_issued", "TMP-1", at, card_number="9"),  # every receipt of a card's component
        *(sale(f"T{n}", at + timedelta(hours=n), "5.00", card_number="9") for n in range(6)),
        *(sale(f"B{n}", at + timedelta(hours=n), "5.00", customer_id="B") for n in range(2)),
    ]
    history = packed(records)
    plan = planned(history, config, 1, one_after_another)
    wanted = latest_receipts(plan, 0, 3)
    ids = [json.loads(r.value).get("receipt_id", "event") for r in records]
    assert sorted({i for i, w in zip(ids, wanted, strict=True) if w}) == sorted(
        {"A5", "A6", "A7", "event", "T0", "T1", "T2", "T3", "T4", "T5", "B0", "B1"}
    )
    result = replay_shard(config, history, partitioner, DEFAULT_PARTITIONS, plan, 0, {})
    assert not result.remade
    assert picture(combine(config, partitioner, DEFAULT_PARTITIONS, [result], len(records))) == picture(
        in_one_piece(config, records, until=None)
    )


def test_a_shard_whose_customers_latest_receipts_were_refused_makes_every_message_again(
    config: LoyaltyConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """The shard makes the messages of each customer's latest five receipt ids (three and a
    slack of two); three refused ones last leave the third latest counted without its message."""
    at = datetime(2026, 11, 2, 9, tzinfo=BERLIN)
    counted = [sale(f"A{n}", at + timedelta(hours=n), "5.00", customer_id="A") for n in range(8)]
    too_early = [  # a return of a receipt A never made: refused
        record(
            Source.RECEIPTS,
            json.loads(sale(f"X{n}", at + timedelta(days=1), "1.00", customer_id="A").value)
            | {"type": "return", "original_receipt_id": "nowhere"},
            at + timedelta(days=1),
        )
        for n in range(3)
    ]
    records = counted + too_early
    assert config.replay_memory == 3 and shards.MESSAGE_SLACK == 2
    history = packed(records)
    plan = planned(history, config, 2, one_after_another)
    results = [replay_shard(config, history, partitioner, DEFAULT_PARTITIONS, plan, k, {}) for k in range(2)]
    assert [r.remade for r in results] == [plan.routes.shard("A") == k for k in range(2)]
    whole = in_one_piece(config, records, until=None)
    assert whole.refused == 3
    assert picture(combine(config, partitioner, DEFAULT_PARTITIONS, results, len(records))) == picture(whole)
    kept = [r for r in whole.states["A"].receipts.values() if r.message_event is not None]
    assert len(kept) == 3
    # In processes of their own, and the parent says so (the split took up to twice as long).
    rebuilt = rebuild_state(config, records, partitioner, DEFAULT_PARTITIONS, 2, None, min_split=0)
    assert rebuilt.workers == 2 and picture(rebuilt.replayer) == picture(whole)
    assert "1 shard(s) replayed again with every receipt message made" in caplog.text


def test_a_split_leaves_out_the_receipts_before_the_window_as_within_does(config: LoyaltyConfig) -> None:
    since = datetime(2026, 11, 10, tzinfo=BERLIN)
    records = history(10)
    issued = sale("LATE-1", since - timedelta(hours=2), "50.00", customer_id="M-3")  # issued before, sent after
    late = HistoryRecord(issued.source, issued.value, (since + timedelta(days=1)).timestamp())
    records = sorted([*records, late], key=lambda r: r.timestamp)
    inside = list(within(records, since, None))
    assert late in records and late not in inside and len(records) - len(inside) > 500
    whole = picture(in_one_piece(config, inside))
    split, _, _ = rebuild(config, records, partitioner, DEFAULT_PARTITIONS, 2, one_after_another, END, since)
    assert picture(split) == whole  # the inputs counted too: those in the window
    for workers in (1, 2):
        rebuilt = rebuild_state(
            config, records, partitioner, DEFAULT_PARTITIONS, workers, END, min_split=0, since=since
        )
        assert rebuilt.workers == workers
        assert picture(rebuilt.replayer) == whole
