"""Puts a worker together: the pipeline, its sinks, its HTTP views."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from config.schema import LoyaltyConfig
from config.settings import Settings
from sinks.base import CUSTOMER_STATUS, OFFER_TRIGGER, RECEIPT_MESSAGE, STATUS_CHANGE, Sink
from sinks.postgres import PostgresSink
from sinks.redis import RedisSink
from sinks.runner import SinkRunner
from streams import timers
from streams.app import LoyaltyApp, Pipeline, build_pipeline
from streams.clock import Clock
from streams.intake import Intake
from streams.web import BrokerCheck, HealthCheck, register_views

logger = logging.getLogger(__name__)

#: How often the customers-per-level gauge is refreshed from PostgreSQL.
LEVELS_INTERVAL = 15.0


def serve_inputs(p: Pipeline) -> Intake:
    """The live path: the input topics' records in batches through the partition processor
    (streams/intake.py), and the timers that work beside it."""
    intake = Intake(p)
    app = p.app
    assert isinstance(app, LoyaltyApp)
    app.intake = intake
    for topic in (p.receipts, p.customer_events, p.status_commands, p.inputs):
        app.topics.add(topic)  # subscribed, though Faust streams none of them
    timers.register(p, intake)

    @app.task
    async def start_intake() -> None:
        # Consumers (sinks, tills, the demo) may subscribe before the first event is sent.
        outputs = (p.status_changes, p.offer_triggers, p.receipt_messages, p.customer_status, p.dead_letters)
        for topic in (*outputs, p.inputs):
            await topic.maybe_declare()
        await intake.start()

    return intake


def assemble(settings: Settings, config: LoyaltyConfig, clock: Clock | None = None) -> Pipeline:
    p = build_pipeline(settings, config, clock)
    serve_inputs(p)
    redis = RedisSink(settings.redis_url, prefix=settings.loyalty_redis_prefix)
    postgres = PostgresSink(settings.database_url)
    available: dict[str, Sink] = {"redis": redis, "postgres": postgres}
    unknown = [name for name in settings.sink_names if name not in available]
    if unknown:
        raise ValueError(f"LOYALTY_SINKS: unknown sink(s) {', '.join(unknown)}; known: redis, postgres")
    topics = {
        p.status_changes.get_topic_name(): STATUS_CHANGE,
        p.offer_triggers.get_topic_name(): OFFER_TRIGGER,
        p.receipt_messages.get_topic_name(): RECEIPT_MESSAGE,
        p.customer_status.get_topic_name(): CUSTOMER_STATUS,
    }
    runners = [
        SinkRunner(
            available[name],
            bootstrap=settings.kafka_bootstrap,
            group_id=f"{settings.loyalty_app_id}-sink-{name}",
            topics=topics,
            metrics=p.metrics,
            fetch_max_wait_ms=settings.kafka_sink_fetch_max_wait_ms,
            session_timeout_ms=int(settings.kafka_session_timeout * 1000),
            dead_letters=p.dead_letters.get_topic_name(),
        )
        for name in settings.sink_names
    ]
    p.metrics.start_at_zero(
        input_topics=[t.get_topic_name() for t in (p.receipts, p.customer_events, p.status_commands)],
        sinks=settings.sink_names,
    )
    checks: dict[str, HealthCheck] = {"broker": BrokerCheck(settings.kafka_bootstrap)}
    if "redis" in settings.sink_names:
        checks["redis"] = redis.healthy
    if "postgres" in settings.sink_names:
        checks["postgres"] = postgres.healthy
    register_views(p, redis, checks)

    @p.app.task
    async def run_sinks() -> None:
        # The sink runners live as long as the worker; when Faust cancels this task
        # at shutdown, each runner stops its consumer and its sink.
        tasks = [asyncio.create_task(runner.run(), name=f"sink-{runner.sink.name}") for runner in runners]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)

    if "postgres" in settings.sink_names:

        @p.app.timer(interval=LEVELS_INTERVAL)
        async def count_levels() -> None:
            try:
                counts = await postgres.customers_per_level()
            except Exception:
                logger.debug("customers per level unavailable", exc_info=True)
                return
            for (system, level), count in counts.items():
                p.metrics.customers.labels(system, level).set(count)

    return p
