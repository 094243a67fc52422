"""A record past the next expected offset is not taken; the partition is read again until the
expected one comes, and a hole the broker confirms (the same record first after a seek) is a gap."""

from __future__ import annotations

from collections import defaultdict

from faust.types import TP as FaustTP
from intervaltree import IntervalTree

from streams import transport
from streams.continuity import RESEEK_EVERY, Continuity, Verdict

TP = ("receipts", 3)


def taken(continuity: Continuity, *offsets: int) -> list[Verdict]:
    return [continuity.check(TP, offset) for offset in offsets]


def test_records_in_order_are_taken_from_wherever_the_partition_starts() -> None:
    continuity = Continuity()
    assert taken(continuity, 1090, 1091, 1092, 1093) == [Verdict.TAKE] * 4
    assert continuity.expected(TP) == 1094
    assert continuity.rewinds == 0


def test_a_record_read_again_after_a_seek_back_is_taken() -> None:
    # A rebalance seeks back to the committed offset: the agents know their copies.
    continuity = Continuity()
    taken(continuity, 10, 11, 12)
    assert taken(continuity, 8, 9, 10, 11, 12, 13) == [Verdict.TAKE] * 6


def test_the_rebalance_tests_hole_is_read_again_not_skipped() -> None:
    # What the rebalance test saw: 1842 after 1093, with 1094..1841 in the partition.
    continuity = Continuity()
    taken(continuity, 1092, 1093)
    assert continuity.check(TP, 1842) is Verdict.REWIND
    assert continuity.expected(TP) == 1094
    assert continuity.should_seek(TP)
    # The stale batch goes on arriving: each is refused, with no other seek.
    assert taken(continuity, 1843, 1844) == [Verdict.REWIND, Verdict.REWIND]
    assert continuity.refused(TP) == 3
    assert not continuity.should_seek(TP)
    # Then the records the seek asked for, and the rest in order.
    assert taken(continuity, 1094, 1095) == [Verdict.TAKE, Verdict.TAKE]
    assert continuity.refused(TP) == 0
    assert taken(continuity, *range(1096, 1845)) == [Verdict.TAKE] * (1845 - 1096)
    assert continuity.rewinds == 3
    assert continuity.gaps_accepted == 0


def test_a_gap_the_broker_confirms_is_accepted_after_one_seek() -> None:
    # A transaction marker or compaction: after the seek back, the same record comes first.
    continuity = Continuity()
    taken(continuity, 41)
    assert continuity.check(TP, 43) is Verdict.REWIND
    assert continuity.check(TP, 43) is Verdict.GAP
    assert continuity.last_gap == (42, 42)
    assert continuity.expected(TP) == 44
    assert continuity.gaps_accepted == 1


def test_a_stale_record_after_the_trigger_is_not_mistaken_for_a_confirmed_gap() -> None:
    continuity = Continuity()
    taken(continuity, 41)
    assert continuity.check(TP, 43) is Verdict.REWIND
    assert continuity.check(TP, 44) is Verdict.REWIND  # still the stale batch
    assert continuity.check(TP, 42) is Verdict.TAKE  # the seek's answer: the hole was real
    assert continuity.gaps_accepted == 0


def test_partitions_are_independent_and_forgotten_unless_kept_through_a_rebalance() -> None:
    continuity = Continuity()
    other = ("receipts", 0)
    taken(continuity, 5, 6)
    assert continuity.check(other, 100) is Verdict.TAKE
    assert continuity.check(other, 102) is Verdict.REWIND
    continuity.keep_only({TP})
    # `other` was handed to another worker and back: it starts where that worker committed.
    assert continuity.check(other, 500) is Verdict.TAKE
    assert continuity.refused(other) == 0
    # TP was kept: a record past the next one is still a hole.
    assert continuity.check(TP, 9) is Verdict.REWIND


async def test_the_consumer_fills_only_the_gaps_the_agents_confirm() -> None:
    # Faust's fetcher calls _add_gap for any jump; with it a stale batch's hole was committed.
    # The bookkeeping alone, without a running consumer (whose thread owns an event loop).
    consumer = object.__new__(transport.Consumer)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer._gap = defaultdict(IntervalTree)
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    stale, marker = FaustTP("receipts", 3), FaustTP("receipts", 0)
    consumer._committed_offset[stale] = 1094
    consumer._acked[stale].extend([1842, 1843])
    await consumer._add_gap(stale, 1094, 1841)
    assert not consumer._gap[stale]
    assert consumer._new_offset(stale) is None  # nothing committed past the hole
    consumer._committed_offset[marker] = 42
    consumer._acked[marker].extend([42, 44])
    await consumer.confirm_gap(marker, 43, 43)
    assert consumer._new_offset(marker) == 45


def test_a_rewind_whose_expected_record_never_comes_seeks_again_now_and_then() -> None:
    continuity = Continuity()
    taken(continuity, 7)
    sought = 0
    for offset in range(100, 100 + 2 * RESEEK_EVERY):
        assert continuity.check(TP, offset) is Verdict.REWIND
        sought += continuity.should_seek(TP)
    assert sought == 3  # the first, the 1000th and the 2000th
