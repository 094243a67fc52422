"""Puts a worker together: the pipeline, the sinks it runs (`LOYALTY_SINKS`), its HTTP views."""

from __future__ import annotations

from config.settings import Settings
from models.schema import LoyaltyConfig
from sinks.base import CUSTOMER_STATUS, OFFER_TRIGGER, RECEIPT_MESSAGE, STATUS_CHANGE
from sinks.redis import RedisSink
from sinks.service import BrokerCheck, HealthCheck, Sinks, SinkSettings
from streams import timers
from streams.app import LoyaltyApp, Pipeline, build_pipeline
from streams.clock import Clock
from streams.intake import Intake
from streams.web import StatusStore, register_views


def sink_settings(settings: Settings, config: LoyaltyConfig) -> SinkSettings:
    """What the sink runners need, for a worker's sinks and for `loyalty sinks` alike."""
    names, prefix = config.topics, settings.loyalty_topic_prefix
    return SinkSettings(
        bootstrap=settings.kafka_bootstrap,
        app_id=settings.loyalty_app_id,
        topics={
            prefix + names.status_changes: STATUS_CHANGE,
            prefix + names.offer_triggers: OFFER_TRIGGER,
            prefix + names.receipt_messages: RECEIPT_MESSAGE,
            prefix + names.customer_status: CUSTOMER_STATUS,
        },
        dead_letters=prefix + names.dead_letters,
        redis_url=settings.redis_url,
        redis_prefix=settings.loyalty_redis_prefix,
        database_url=settings.database_url,
        fetch_max_wait_ms=settings.kafka_sink_fetch_max_wait_ms,
        session_timeout_ms=int(settings.kafka_session_timeout * 1000),
        max_batch=settings.loyalty_sink_max_batch,
    )


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
    try:
        sinks = Sinks(settings.sink_names, sink_settings(settings, config), p.metrics.sinks)
    except ValueError as exc:
        raise ValueError(f"LOYALTY_SINKS: {exc}") from None
    store = StatusStore(RedisSink(settings.redis_url, prefix=settings.loyalty_redis_prefix))
    # Redis serves the status API, whichever process writes it; PostgreSQL is this worker's
    # concern only when it runs that sink.
    checks: dict[str, HealthCheck] = {"broker": BrokerCheck(settings.kafka_bootstrap), "redis": store.healthy}
    checks |= {name: check for name, check in sinks.checks.items() if name != "redis"}
    register_views(p, store, checks, sinks)
    p.metrics.start_at_zero(
        input_topics=[t.get_topic_name() for t in (p.receipts, p.customer_events, p.status_commands)],
        sinks=settings.sink_names,
    )

    if sinks.runners:

        @p.app.task
        async def run_sinks() -> None:
            # The sinks live as long as the worker; when Faust cancels this task at
            # shutdown, each runner stops its consumer and its sink.
            await sinks.run()

    return p
