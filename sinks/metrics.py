"""The sinks' Prometheus metrics (docs/operations.md, "Metrics", documents each one).

A `SinkMetrics` registers into the registry it is given: the worker passes its own,
so a worker that runs sinks serves their metrics beside the pipeline's at one
`/metrics`; `loyalty sinks` gives each process a registry of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.writes = Counter("loyalty_sink_writes", "Records written by each sink.", ["sink"], registry=r)
        self.errors = Counter(
            "loyalty_sink_write_errors", "Failed sink writes (each is retried), by sink.", ["sink"], registry=r
        )
        self.retries = Counter("loyalty_sink_retries", "Sink write retries, by sink.", ["sink"], registry=r)
        self.dead_letters = Counter(
            "loyalty_sink_dead_letters",
            "Records a sink's store refused, set aside on the dead-letter topic, by sink.",
            ["sink"],
            registry=r,
        )
        self.buffer = Gauge(
            "loyalty_sink_buffer_depth",
            "Records fetched by a sink and not yet written, by sink.",
            ["sink"],
            registry=r,
        )
        self.lag = Gauge("loyalty_sink_lag", "Output records not yet read by a sink, by sink.", ["sink"], registry=r)
        self.consumer_lag = Gauge(
            "loyalty_sink_consumer_lag",
            "Output records not yet written by a sink (end offset minus the sink's committed offset), "
            "by sink and topic.",
            ["sink", "topic"],
            registry=r,
        )
        self.oldest_unwritten = Gauge(
            "loyalty_sink_oldest_unwritten_seconds",
            "Age of the oldest output event a sink has not written yet (0 when it has everything), by sink.",
            ["sink"],
            registry=r,
        )
        self.up = Gauge("loyalty_sink_up", "1 when the sink's last write succeeded.", ["sink"], registry=r)
        self.customers = Gauge(
            "loyalty_customers",
            "Customers per level, by status system (from PostgreSQL: the same figure on every process that "
            "runs the PostgreSQL sink, use max).",
            ["system", "level"],
            registry=r,
        )

    def start_at_zero(self, sinks: Iterable[str]) -> None:
        """The counters alerts and panels watch, at zero for each sink this process runs (a labelled
        counter has no series until its first increment, so its first error would raise no alert)."""
        for sink in sinks:
            for counter in (self.writes, self.errors, self.retries, self.dead_letters):
                counter.labels(sink)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
