"""Connection and runtime settings, read once from the environment (or a `.env` file)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.loading import DEFAULT_CONFIG


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    kafka_bootstrap: str = "localhost:9092"
    redis_url: str = "redis://localhost:6379/0"
    database_url: str = "postgresql://postgres@localhost:5432/loyalty"
    loyalty_config: str = str(DEFAULT_CONFIG)
    web_port: int = 6066
    api_token: str | None = Field(default=None, repr=False)

    #: Consumer group and changelog namespace of the workers.
    loyalty_app_id: str = "loyalty"
    #: Prefixed to every topic name, so several pipelines (or tests) share one broker.
    loyalty_topic_prefix: str = ""
    #: Partitions of the topics the pipeline creates itself (internal and changelog).
    loyalty_partitions: int = Field(default=4, ge=1)
    #: How long a fetch may wait on the broker for data. Apache Kafka answers as soon as
    #: data arrives, so this only bounds idle polling there. On the embedded Tansu broker
    #: every fetch costs CPU, so a shorter wait is not a lower latency there
    #: (benchmarks/fetch_wait.py; docs/performance.md).
    kafka_fetch_max_wait_ms: int = Field(default=50, ge=0)
    #: The same for the sinks' consumers, which need no low latency: on Tansu every fetch
    #: costs broker CPU in proportion to the partition's length, so fewer fetches leave it
    #: to the receipts (docs/performance.md).
    kafka_sink_fetch_max_wait_ms: int = Field(default=250, ge=0)
    #: The most records a sink runner holds: the batch it writes (one Redis script call, one
    #: PostgreSQL transaction) and the next, fetched meanwhile, each at most half; the bounded
    #: buffer of a sink that is down. A batch is one commit, so larger ones drain a backlog
    #: faster (docs/performance.md, "Sinks").
    loyalty_sink_max_batch: int = Field(default=5000, ge=1)
    #: Consumer-group session timeout, seconds (how long a dead worker keeps its partitions).
    kafka_session_timeout: float = Field(default=6.0, gt=0)
    #: Where the worker keeps its local files (Faust's data directory).
    loyalty_data_dir: str = ".loyalty-data"
    #: Where the customers table keeps its states (streams/store.py): `rocksdb`, on disk in the
    #: data directory, so memory holds only the hot customers and a restart reads only the
    #: changelog's tail; or `memory`, all of them in memory, rebuilt from the whole changelog
    #: at every start (docs/performance.md, "State").
    loyalty_store: Literal["memory", "rocksdb"] = "rocksdb"
    #: How many decoded customer states the worker keeps in memory (the record cache).
    loyalty_state_cache: int = Field(default=50_000, ge=1)
    log_level: str = "info"
    #: The sinks `loyalty worker` runs in its own process, comma-separated (`redis`, `postgres`);
    #: empty for none, when `loyalty sinks` runs them.
    loyalty_sinks: str = "redis,postgres"
    #: Prefix of every Redis key the pipeline writes.
    loyalty_redis_prefix: str = "loyalty:"
    #: Tests and rehearsals: the worker's wall clock starts at this instant (ISO-8601 with
    #: offset) and runs on from there; it dates the daily campaign runs. Unset: the real clock.
    loyalty_clock_start: datetime | None = None
    #: The close walk's pace (streams/intake.py): a slice at most this often between batches,
    #: and one this often while no input comes. Tests stretch them to stop walks.
    loyalty_walk_every: float = Field(default=0.010, gt=0)
    loyalty_walk_nudge_every: float = Field(default=0.05, gt=0)
    #: Seconds between two commits of the live path: states to the changelog, then offsets.
    #: A crash repeats at most this much work (which changes nothing twice).
    loyalty_commit_interval: float = Field(default=0.5, gt=0)

    #: The worker's event loop: `uvloop` (libuv; measurably less overhead per event) or `asyncio`.
    loyalty_event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @property
    def sink_names(self) -> list[str]:
        return [name.strip() for name in self.loyalty_sinks.split(",") if name.strip()]
