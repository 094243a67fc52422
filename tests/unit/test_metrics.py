"""The batch histogram is exposed exactly as prometheus-client's own histogram would be."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

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
