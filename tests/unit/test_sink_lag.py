"""What a sink runner reports it has not written: lag per partition and the oldest unwritten event's age."""

from __future__ import annotations

from aiokafka import TopicPartition

from sinks.runner import Progress, _Unwritten

A, B = TopicPartition("t-receipt-messages", 0), TopicPartition("t-receipt-messages", 1)


def test_nothing_is_behind_until_both_offsets_are_known() -> None:
    unwritten = _Unwritten()
    unwritten.seen_end(A, 10, now=100.0)
    assert unwritten.behind(A) == 0 and unwritten.oldest_age(now=105.0) == 0.0
    unwritten.committed[A] = 4
    unwritten.seen_end(A, 10, now=101.0)
    assert unwritten.behind(A) == 6


def test_an_end_never_moves_back() -> None:
    # The embedded broker's ListOffsets can report less than a fetch's high watermark did.
    unwritten = _Unwritten()
    unwritten.committed[A] = 0
    unwritten.seen_end(A, 300, now=1.0)
    unwritten.seen_end(A, 120, now=2.0)
    assert unwritten.behind(A) == 300


def test_the_age_is_exact_for_the_batch_in_hand_and_bounded_before_it_is_fetched() -> None:
    unwritten = _Unwritten()
    unwritten.committed[A] = 0
    unwritten.seen_end(A, 0, now=50.0)  # caught up at 50
    unwritten.seen_end(A, 5, now=51.0)  # five records arrive, none fetched yet
    assert unwritten.oldest_age(now=60.0) == 10.0  # produced after 50: at most 10 s old
    unwritten.fetched(A, first_timestamp=52.5)
    unwritten.fetched(A, first_timestamp=54.0)  # the next batch, fetched while the first is written
    assert unwritten.oldest_age(now=60.0) == 7.5  # the first record in hand
    unwritten.wrote(A, next_offset=3, timestamp=53.0, now=61.0)
    assert unwritten.oldest_age(now=61.0) == 7.0  # now the second batch's first
    unwritten.wrote(A, next_offset=5, timestamp=55.0, now=62.0)
    assert unwritten.behind(A) == 0 and unwritten.oldest_age(now=70.0) == 0.0


def test_while_records_flow_the_age_follows_the_last_record_written() -> None:
    unwritten = _Unwritten()
    unwritten.committed[A] = 0
    unwritten.seen_end(A, 10, now=100.0)  # never caught up since the runner started
    assert unwritten.oldest_age(now=100.0) == 0.0  # nothing known yet: not counted
    unwritten.fetched(A, first_timestamp=99.0)
    unwritten.wrote(A, next_offset=6, timestamp=99.5, now=100.2)
    assert unwritten.oldest_age(now=101.0) == 1.5  # the next record was produced after 99.5


def test_the_oldest_partition_decides_and_a_revoked_one_is_forgotten() -> None:
    unwritten = _Unwritten()
    for tp, clear in ((A, 10.0), (B, 30.0)):
        unwritten.committed[tp] = 0
        unwritten.seen_end(tp, 0, now=clear)
        unwritten.seen_end(tp, 3, now=clear + 1)
    assert unwritten.oldest_age(now=40.0) == 30.0
    unwritten.forget({B})
    assert unwritten.oldest_age(now=40.0) == 10.0 and A not in unwritten.committed


def test_progress_reads_as_health_shows_it() -> None:
    assert Progress(up=True, lag={"a": 2, "b": 3}, oldest_unwritten_seconds=1.23456).as_json() == {
        "up": True,
        "lag": 5,
        "lag_by_topic": {"a": 2, "b": 3},
        "oldest_unwritten_seconds": 1.235,
    }
    assert Progress(up=False, lag=None, oldest_unwritten_seconds=0.0).as_json()["lag"] is None
