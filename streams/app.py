"""The one place that builds the Faust app, its topics and its table.

`build_pipeline` takes the settings and the rules as values, so tests and the
demo can build as many independent pipelines as they like; nothing here reads
the environment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.types import TopicT
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

from config.settings import Settings
from models.schema import LoyaltyConfig
from streams import transport
from streams.clock import Clock, SystemClock
from streams.metrics import Metrics
from streams.store import ROCKSDB_OPTIONS, CustomersTable

logger = logging.getLogger(__name__)


def inputs_topic(app_id: str) -> str:
    """The internal topic the ingest agents repartition into: one per namespace (app id), so a
    namespace that `loyalty replay` builds starts with its own, empty one. `loyalty-inputs`
    for the default app id."""
    return f"{app_id}-inputs"


def changelog_topic(app_id: str, prefix: str) -> str:
    """Faust's name for the customers table's changelog: `{app id}-{table name}-changelog`."""
    return f"{app_id}-{prefix}customers-changelog"


@dataclass
class Pipeline:
    app: faust.App
    settings: Settings
    config: LoyaltyConfig
    clock: Clock
    partitions: int
    receipts: TopicT
    status_commands: TopicT
    customer_events: TopicT
    inputs: TopicT
    status_changes: TopicT
    offer_triggers: TopicT
    receipt_messages: TopicT
    dead_letters: TopicT
    customer_status: TopicT
    customers: CustomersTable
    metrics: Metrics


class FlowControlKeepingEvents(FlowControlEvent):
    """Faust's stream flow control, except that resuming a flow that is not suspended drops nothing.

    faust-streaming empties every stream buffer whenever flow control is resumed. Table
    recovery resumes it twice: when recovery starts (the rebalance had suspended the flow, and
    emptying is right: what is buffered may belong to revoked partitions) and again when it
    completes, *after* it has resumed the stream partitions and sought them to their committed
    offsets. Events fetched in that window were thrown away although the consumer had moved
    past them, so they were never processed and never acknowledged, and the partition's
    committed offset stuck behind them until the next rebalance. Here the second resume finds
    the flow already running and keeps the buffers: those events belong to the new assignment.
    """

    def resume(self) -> None:
        if self.is_active():
            return
        super().resume()


class LoyaltyApp(faust.App):
    #: The live path (streams/intake.py), set when a worker is assembled: the consumer hands it
    #: the input topics' records (streams/transport.py).
    intake: Any = None

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return FlowControlKeepingEvents(loop=self.loop)

    async def on_stop(self) -> None:
        if self.intake is not None:
            await self.intake.stop()  # the last inputs committed while the consumer still runs
        await super().on_stop()


def build_pipeline(settings: Settings, config: LoyaltyConfig, clock: Clock | None = None) -> Pipeline:
    partitions = settings.loyalty_partitions
    app = LoyaltyApp(
        settings.loyalty_app_id,
        broker=transport.broker_url(settings.kafka_bootstrap, fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms),
        store=f"{settings.loyalty_store}://",  # the customers table's (streams/store.py)
        datadir=str(Path(settings.loyalty_data_dir) / settings.loyalty_app_id),
        topic_partitions=partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        web_port=settings.web_port,
        web_host="0.0.0.0",
        # Raw bytes in and out: the core decodes exactly once, with Decimal for money.
        key_serializer="raw",
        value_serializer="raw",
        # Changelog recovery must finish before we serve; a short interval keeps restarts quick.
        broker_commit_interval=1.0,
        # A worker losing partitions finishes the inputs it has begun and commits before it
        # lets go (Faust's wait_empty, whose commit runs the flush that writes their states).
        # Without it the old owner wrote those states after the new owner had read the
        # changelog, and could commit their offsets: a customer one write behind, in the new
        # owner's hands (the rebalance test's "one event id with two contents").
        stream_wait_empty=True,
        # Tansu completes a group join only after half the session timeout, so Faust's
        # 60 s default meant a 30 s start; 6 s is Apache Kafka's smallest allowed value
        # (group.min.session.timeout.ms) and starts a worker in about 4 s on Tansu.
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=min(1.0, settings.kafka_session_timeout / 3),
        producer_linger=0.005,
        # One flush's changelog records of a partition in one batch, which the broker appends
        # whole, so a state and the partition's source positions written after it land together.
        # Faust's 16 KB holds a few customers' states: a flush can go out as many batches, and a
        # SIGKILL between them leaves states whose positions were lost; their inputs then come
        # back as new ones (a crash run under load dead-lettered 282 receipts of one busy
        # customer as too old to tell apart, the likely cause). Builders still leave after their
        # linger or at a flush, so this delays nothing.
        producer_max_batch_size=1_000_000,
        # Faust's 20 minutes let one unanswered produce request block the live path that long;
        # a failed send stops the worker instead (streams/intake.py), to be restarted.
        producer_request_timeout=30.0,
    )

    def topic(name: str, **kwargs: object) -> TopicT:
        return app.topic(settings.loyalty_topic_prefix + name, key_type=bytes, value_type=bytes, **kwargs)  # type: ignore[arg-type]

    names = config.topics
    return Pipeline(
        app=app,
        settings=settings,
        config=config,
        clock=clock or SystemClock(),
        partitions=partitions,
        receipts=topic(names.receipts),
        status_commands=topic(names.status_commands),
        customer_events=topic(names.customer_events),
        inputs=topic(inputs_topic(settings.loyalty_app_id), partitions=partitions, internal=True),
        status_changes=topic(names.status_changes),
        offer_triggers=topic(names.offer_triggers),
        receipt_messages=topic(names.receipt_messages),
        dead_letters=topic(names.dead_letters),
        customer_status=topic(names.customer_status, compacting=True),
        customers=app.tables.add(  # type: ignore[arg-type]
            CustomersTable(
                app,
                name=settings.loyalty_topic_prefix + "customers",
                beacon=app.tables.beacon,
                partitions=partitions,
                key_type=bytes,
                value_type=bytes,
                options=dict(ROCKSDB_OPTIONS) if settings.loyalty_store == "rocksdb" else None,
            )
        ),
        metrics=Metrics(),
    )
