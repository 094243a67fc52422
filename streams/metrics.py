"""The worker's Prometheus metrics (docs/operations.md, "Metrics", documents each one).

One registry per pipeline, so tests can build several in one process; the
worker serves it at `GET /metrics`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily

from sinks.metrics import SinkMetrics

#: Buckets for a till: a receipt line must be there in tens of milliseconds.
TILL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Counter] = {}
        r = self.registry
        self.receipts = Counter(
            "loyalty_receipts",
            "Receipts taken in, by type (sale, return, unknown) and outcome "
            "(counted, duplicate, late, anonymous, dead_letter).",
            ["type", "outcome"],
            registry=r,
        )
        self.commands = Counter(
            "loyalty_commands", "Status commands taken in, by type and outcome.", ["type", "outcome"], registry=r
        )
        self.customer_events = Counter(
            "loyalty_customer_events",
            "Customer events taken in, by type and outcome (applied, duplicate, dead_letter).",
            ["type", "outcome"],
            registry=r,
        )
        self.events = Counter(
            "loyalty_events",
            "Events published, by kind (status_change, offer_trigger, receipt_message, customer_status).",
            ["kind"],
            registry=r,
        )
        self.status_changes = Counter(
            "loyalty_status_changes",
            "Status changes published, by status system, direction and the level reached.",
            ["system", "direction", "level"],
            registry=r,
        )
        self.offers = Counter("loyalty_offers", "Offer triggers published, by offer.", ["offer"], registry=r)
        self.dead_letters = Counter(
            "loyalty_dead_letters", "Records sent to the dead-letter topic, by source topic.", ["topic"], registry=r
        )
        self.input_failures = Counter(
            "loyalty_input_failures",
            "Inputs whose processing raised an error other than a refusal (a bug): dead-lettered with it.",
            ["topic"],
            registry=r,
        )
        self.processing = Histogram(
            "loyalty_processing_seconds",
            "Time the live path spends on one input (decode, rules, state, sends), averaged over its batch.",
            buckets=TILL_BUCKETS,
            registry=r,
        )
        self.end_to_end = BatchHistogram(
            "loyalty_end_to_end_seconds",
            "From the receipt's Kafka timestamp to its receipt message being handed to the producer.",
            TILL_BUCKETS,
            r,
        )
        self.changelog_writes = Counter(
            "loyalty_changelog_writes",
            "State records written to the customers table's changelog (one per changed key per commit).",
            registry=r,
        )
        self.input_copies = Counter(
            "loyalty_input_copies",
            "Inputs dropped on loyalty-inputs as copies a worker routed again after a restart "
            "or a rebalance (streams/positions.py).",
            registry=r,
        )
        self.rewinds = Counter(
            "loyalty_rewinds",
            "Records that came in place of the one expected next, not taken, their partition read again "
            "(streams/intake.py), by topic.",
            ["topic"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "loyalty_consumer_lag",
            "Records not yet processed, by topic and partition (this worker's assignment).",
            ["topic", "partition"],
            registry=r,
        )
        #: The sink runners' metrics, in this registry: a worker that runs sinks serves them too.
        self.sinks = SinkMetrics(r)
        self.close_walk = Gauge(
            "loyalty_close_walk_remaining",
            "Stored records a partition's period-close walk has still to look at, by partition (0: none running).",
            ["partition"],
            registry=r,
        )
        self.closed_by_walk = Counter(
            "loyalty_period_closes",
            "Customers whose periods the partition's close frontier closed, by what reached them first.",
            ["by"],
            registry=r,
        )

    def start_at_zero(self, *, input_topics: Iterable[str], sinks: Iterable[str]) -> None:
        """Creates the labelled counters that alerts and dashboard panels watch, at zero.

        A labelled counter has no series until its first increment, and Prometheus'
        `increase()` cannot count the step from nothing to 1: the first dead letter or
        sink error of a process's life would raise no alert, and its panel would say
        "No data" where it means 0. Call once when the process starts, with the input
        topics' full names and the sinks it runs.
        """
        for topic in input_topics:
            for counter in (self.dead_letters, self.input_failures, self.rewinds):
                counter.labels(topic)
        self.sinks.start_at_zero(sinks)

    def child(self, metric: Counter, *labels: str) -> Counter:
        """`metric.labels(*labels)`, resolved once: prometheus-client's lookup (validation, a
        lock) cost more than the rest of publishing an event."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class BatchHistogram:
    """A histogram without labels, observed a batch of values at a time.

    prometheus-client's `Histogram.observe` takes a lock and walks its buckets for each
    value: per receipt on the live path, that cost more than parsing the receipt's
    timestamp. This one counts a batch into plain lists (`observe_many`) and is
    exposed as a registry collector, in the same exposition format. It is read and
    written on the event loop's thread only.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = sorted(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket (not cumulative), the last one +Inf
        self.sum = 0.0
        registry.register(self)

    def observe_many(self, values: Sequence[float]) -> None:
        counts, bounds, where = self.counts, self.bounds, bisect.bisect_left
        for value in values:
            counts[where(bounds, value)] += 1  # a value on a bound is in that bound's bucket (le)
        self.sum += sum(values)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[])
        cumulative, total = [], 0
        for bound, count in zip([*self.bounds, float("inf")], self.counts, strict=True):
            total += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        family.add_metric([], cumulative, self.sum)
        yield family
