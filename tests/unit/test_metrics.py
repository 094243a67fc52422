"""The worker's own instruments: the batch histogram, exposed exactly as prometheus-client's
own histogram would be, the log line of a stalled commit, and a
fetch that a revocation makes stale."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streams.intake import Intake
from streams.metrics import TILL_BUCKETS, BatchHistogram


def exposition(registry: CollectorRegistry) -> list[str]:
    # prometheus-client's histogram also has a `_created` sample, which a collector need not have.
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_a_batch_histogram_counts_as_prometheus_clients_histogram_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("till_seconds", "Ages.", TILL_BUCKETS, ours)
    reference = Histogram("till_seconds", "Ages.", buckets=TILL_BUCKETS, registry=theirs)
    rng = random.Random(7)
    # Values on the bounds too: each belongs to the bucket whose `le` it equals.
    values = [rng.expovariate(20.0) for _ in range(1000)] + list(TILL_BUCKETS) + [0.0, 99.0]
    for start in range(0, len(values), 37):
        batch.observe_many(values[start : start + 37])
    for value in values:
        reference.observe(value)
    ours_lines, theirs_lines = exposition(ours), exposition(theirs)
    assert [line for line in ours_lines if "_sum" not in line] == [line for line in theirs_lines if "_sum" not in line]
    assert float(ours_lines[-1].split()[-1]) == pytest.approx(sum(values))
    assert any('le="+Inf"} 1014.0' in line for line in ours_lines)


def test_a_stalled_commit_is_logged_with_what_it_waits_for_and_not_at_every_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    intake = SimpleNamespace(last_commit=time.monotonic() - 12.4, stall_logged=0.0, commit_step="the delivery of 3")
    with caplog.at_level(logging.WARNING, logger="streams.intake"):
        Intake._stalled(intake)  # type: ignore[arg-type]
        Intake._stalled(intake)  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == ["a commit has waited 12 s so far, for the delivery of 3"]
    fresh = SimpleNamespace(last_commit=time.monotonic() - 2.0, stall_logged=0.0, commit_step="anything")
    Intake._stalled(fresh)  # type: ignore[arg-type]
    assert len(caplog.records) == 1


class _Fetch:
    """Enough of an Intake for `_take`: every slice it is handed is recorded, and a revocation
    comes after the first (what `Intake.revoke` does to the generation)."""

    def __init__(self) -> None:
        self.generation = 0
        self.handed: list[int] = []  # each slice's first record

    async def _take_slice(self, part: dict[str, list[int]], generation: int) -> bool:
        self.handed.append(part["receipts-0"][0])
        if generation != self.generation:
            return False
        self.generation += 1
        return True


async def test_a_fetch_taken_in_slices_stops_at_a_revocation_between_two() -> None:
    fetch = _Fetch()
    await Intake._take(fetch, {"receipts-0": list(range(250))})  # type: ignore[arg-type, dict-item]
    # The first slice is taken, the second refused as stale, and the third never handed over.
    assert fetch.handed == [0, 100]


async def test_a_slice_of_an_older_generation_takes_nothing() -> None:
    # Returns before it looks at a record: the stub has nothing else to look at.
    stale = SimpleNamespace(
        lock=asyncio.Lock(), generation=3, app=SimpleNamespace(consumer=SimpleNamespace(flow_active=True))
    )
    assert await Intake._take_slice(stale, {}, 2) is False  # type: ignore[arg-type]
