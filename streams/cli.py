"""The `loyalty` command."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from config.loading import load_config
from config.settings import Settings
from models.errors import ConfigError, InvalidPeriod
from models.periods import PeriodKind, parse_period
from models.schema import LoyaltyConfig


def _load(path: str | None, settings: Settings) -> LoyaltyConfig:
    try:
        return load_config(path or settings.loyalty_config)
    except ConfigError as exc:
        click.echo(f"{path or settings.loyalty_config}: invalid configuration", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)


def _send_command(settings: Settings, config: LoyaltyConfig, key: str, command: dict[str, str]) -> None:
    """Publishes one command to the status-commands topic and waits until the broker has it."""
    from streams.local.probe import produce

    topic = settings.loyalty_topic_prefix + config.topics.status_commands
    asyncio.run(produce(settings.kafka_bootstrap, topic, [(key.encode(), json.dumps(command).encode())]))


@click.group()
def cli() -> None:
    """Real-time loyalty statuses from a stream of POS receipts."""


@cli.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False))
def check_config(file: str) -> None:
    """Validate a configuration file; exit 1 listing every problem by path."""
    try:
        config = load_config(file)
    except ConfigError as exc:
        click.echo(f"{file}: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            click.echo(f"  {problem}")
        sys.exit(1)
    systems = ", ".join(f"{s.id} ({len(s.levels)} levels)" for s in config.status_systems)
    click.echo(f"{file}: ok: {systems}; {len(config.offers)} offers; {len(config.receipt_messages)} message rules")


@cli.command()
@click.option("--config", "config_path", default=None, help="loyalty.yaml to use (default: $LOYALTY_CONFIG).")
def worker(config_path: str | None) -> None:
    """Run one Faust worker process (start one per core to scale out)."""
    import faust

    from streams.clock import OffsetClock
    from streams.worker import assemble

    settings = Settings()
    config = _load(config_path, settings)
    if settings.loyalty_event_loop == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")  # before anything creates the loop
    clock = OffsetClock(settings.loyalty_clock_start) if settings.loyalty_clock_start else None
    Path(settings.loyalty_data_dir).mkdir(parents=True, exist_ok=True)  # Faust expects the parent to exist
    pipeline = assemble(settings, config, clock)
    runner = faust.Worker(pipeline.app, loglevel=settings.log_level.upper())
    # Faust's terminal spinner sets the root logger to DEBUG so that it can spin on
    # every record, a cost paid on every record for a terminal nobody watches.
    runner.spinner = None
    # The worker keeps many long-lived objects (states, the framework) and makes few cycles:
    # what exists now is left out of every collection, and the young generation is collected
    # every 50,000 allocations rather than 700 while Faust starts; once the live path runs,
    # its collector (streams/collector.py) keeps the collections to what each commit made.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    runner.execute_from_commandline()


@cli.command()
@click.option("--config", "config_path", default=None, help="loyalty.yaml to use (default: $LOYALTY_CONFIG).")
@click.option(
    "--only", type=click.Choice(["redis", "postgres"]), default=None, help="Run this sink alone (default: both)."
)
def sinks(config_path: str | None, only: str | None) -> None:
    """Run the sinks alone (Redis, PostgreSQL), in their own consumer groups, with /health and /metrics on WEB_PORT."""
    from sinks.service import KNOWN_SINKS, run_alone
    from streams.worker import sink_settings

    settings = Settings()
    config = _load(config_path, settings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
    )
    names = [only] if only else list(KNOWN_SINKS)
    main = run_alone(names, sink_settings(settings, config), host="0.0.0.0", port=settings.web_port)
    if settings.loyalty_event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


@cli.command()
@click.option("--rate", type=float, default=100.0, show_default=True, help="Receipts per second.")
@click.option("--customers", type=int, default=1000, show_default=True)
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds to run.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--simulate-from", default=None, help="ISO date: sweep receipt timestamps from it to now.")
def generate(rate: float, customers: int, duration: float, seed: int, simulate_from: str | None) -> None:
    """Send realistic POS traffic to the receipts topic."""
    from streams.local.generator import TrafficShape
    from streams.local.generator import generate as run

    settings = Settings()
    config = _load(None, settings)
    start = _aware(simulate_from, config) if simulate_from else None
    stats = asyncio.run(
        run(
            settings.kafka_bootstrap,
            settings.loyalty_topic_prefix + config.topics.receipts,
            rate=rate,
            duration=duration,
            shape=TrafficShape(customers=customers, seed=seed),
            simulate_from=start,
        )
    )
    click.echo(f"sent {stats.sent} receipts")


@cli.command("close-period")
@click.argument("status_system")
@click.argument("period")
def close_period(status_system: str, period: str) -> None:
    """Close PERIOD (e.g. 2026-11) of STATUS_SYSTEM for every customer now."""
    settings = Settings()
    config = _load(None, settings)
    try:
        parse_period(PeriodKind(config.system(status_system).period), period)
    except KeyError:
        raise click.BadParameter(f"unknown status system {status_system!r}") from None
    except InvalidPeriod as exc:
        raise click.BadParameter(str(exc)) from None
    command = {
        "command_id": f"close-{status_system}-{period}-{uuid.uuid4().hex[:8]}",
        "type": "close_period",
        "status_system": status_system,
        "period": period,
    }

    _send_command(settings, config, status_system, command)
    click.echo(f"sent {command['command_id']}")


@cli.command("run-campaigns")
@click.option("--date", "day", default=None, help="Local date YYYY-MM-DD (default: today in the configured zone).")
def run_campaigns_command(day: str | None) -> None:
    """Run the date-triggered campaigns (birthday bonus) for a local date now; a date run twice grants nothing twice."""
    from models.errors import InvalidInput
    from models.inputs import parse_day

    settings = Settings()
    config = _load(None, settings)
    try:
        when = parse_day(day, "--date") or datetime.now(config.timezone).date()
    except InvalidInput as exc:
        raise click.BadParameter(str(exc)) from None
    command = {
        "command_id": f"campaigns-{when.isoformat()}-{uuid.uuid4().hex[:8]}",
        "type": "run_campaigns",
        "date": when.isoformat(),
    }
    _send_command(settings, config, "campaigns", command)
    click.echo(f"sent {command['command_id']} for {when.isoformat()}")


@cli.command("load-statuses")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--operator", default="load-statuses", show_default=True, help="Recorded as the changes' operator.")
def load_statuses(file: str, operator: str) -> None:
    """Assign statuses from FILE (customer_id,status_system,status[,valid_until][,reason]).

    Good rows are published as set_status commands; each bad row is reported with its
    line number. Exit 1 when any row was rejected (the good ones are still sent).
    """
    from aiokafka import AIOKafkaProducer
    from rich.progress import Progress

    from streams.batch import Accepted, read_rows

    settings = Settings()
    config = _load(None, settings)
    data = Path(file).read_bytes()
    topic = settings.loyalty_topic_prefix + config.topics.status_commands
    rejected: list[str] = []

    async def send() -> int:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, max_batch_size=1 << 20, acks="all"
        )
        await producer.start()
        accepted = 0
        try:
            with Progress(transient=True) as progress:
                task = progress.add_task("publishing", total=data.count(b"\n") + 1)
                for row in read_rows(data, config, datetime.now(UTC), operator):
                    if isinstance(row, Accepted):
                        await producer.send(topic, key=row.customer_id.encode(), value=row.command)
                        accepted += 1
                    else:
                        rejected.append(f"line {row.line}: {row.reason}")
                    if (accepted + len(rejected)) % 1000 == 0:
                        progress.update(task, completed=row.line)
                await producer.flush()
        finally:
            await producer.stop()
        return accepted

    accepted = asyncio.run(send())
    for problem in rejected:
        click.echo(problem, err=True)
    click.echo(f"{file}: {accepted} accepted, {len(rejected)} rejected")
    if rejected:
        sys.exit(1)


@cli.command()
@click.option("--rate", type=float, default=1000.0, show_default=True, help="Receipts per second offered.")
@click.option("--customers", type=int, default=2000, show_default=True)
@click.option("--duration", type=float, default=30.0, show_default=True, help="Seconds of traffic.")
@click.option("--results", type=click.Path(file_okay=False), default=None, help="Also write the summary as JSON here.")
@click.option(
    "--prometheus",
    is_flag=True,
    help="Also run a local Prometheus (deploy/prometheus/, alerting rules included) scraping the worker.",
)
def demo(rate: float, customers: int, duration: float, results: str | None, prometheus: bool) -> None:
    """Start the embedded stack, a worker, the sinks and the generator; show progress and a summary."""
    from streams.local.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    settings = Settings()
    config = _load(None, settings)
    summary = run_demo(settings, config, rate=rate, customers=customers, duration=duration, prometheus=prometheus)
    if results:
        Path(results).mkdir(parents=True, exist_ok=True)
        (Path(results) / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    if summary["messages"] == 0:
        sys.exit(1)


def _input_topics(settings: Settings, config: LoyaltyConfig) -> dict[Any, str]:
    from models.history import Source

    names = config.topics
    prefix = settings.loyalty_topic_prefix
    return {
        Source.RECEIPTS: prefix + names.receipts,
        Source.CUSTOMER_EVENTS: prefix + names.customer_events,
        Source.STATUS_COMMANDS: prefix + names.status_commands,
    }


@cli.command("what-if")
@click.option("--config", "new_path", required=True, type=click.Path(dir_okay=False), help="The rules to try.")
@click.option("--current", "current_path", default=None, help="The rules in force (default: $LOYALTY_CONFIG).")
@click.option("--from", "since", default=None, help="Replay inputs from this date (default: all the topics hold).")
@click.option("--to", "until", default=None, help="...up to this date, exclusive; periods ended by then are closed.")
@click.option("--out", default="what-if", show_default=True, type=click.Path(file_okay=False), help="For the files.")
def what_if(new_path: str, current_path: str | None, since: str | None, until: str | None, out: str) -> None:
    """Replay the input history under the current and a new configuration and compare them.

    Customers start at the first level at --from (nothing before it is read), so start
    a period early: --from 2026-10-01 --to 2026-12-01 shows December's levels as
    October's and November's purchases earn them under each configuration.
    """
    from rich.console import Console

    from streams.history.reading import read_history, within
    from streams.history.whatif import run_what_if

    settings = Settings()
    new = _load(new_path, settings)  # both are validated before anything is read
    current = _load(current_path, settings)
    start = _aware(since, current) if since else None
    end = _aware(until, current) if until else None
    console = Console()
    started = time.monotonic()
    history = asyncio.run(
        read_history(
            settings.kafka_bootstrap,
            _input_topics(settings, current),
            since=start,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        )
    )
    records = list(within(history.records, start, end))
    console.print(
        f"read {len(history.records)} input records, {len(records)} in the window, {time.monotonic() - started:.1f} s"
    )
    run_what_if(current, new, records, settings.loyalty_partitions, end or datetime.now(UTC), Path(out), console)
    console.print(f"done in {time.monotonic() - started:.1f} s")


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The rules to go live.")
@click.option("--from", "since", required=True, help="Count receipts from this date (customer events: all).")
@click.option("--app-id", "app_id", required=True, help="The new namespace (consumer group, tables) to build.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes to split the replay across, by customer (default: one per core, for 20,000 inputs or more).",
)
def replay(config_path: str, since: str, app_id: str, workers: int | None) -> None:
    """Rebuild the live state under a configuration, in a new namespace, for the day it goes live.

    Stop the workers first; start them again afterwards with LOYALTY_APP_ID=APP_ID and
    LOYALTY_CONFIG=CONFIG. Customers whose level differs from the old namespace's get a
    status change with reason `recalculation`.
    """
    from streams.history.replay import NamespaceInUse
    from streams.history.replay import replay as run
    from streams.history.shards import MIN_SPLIT, default_workers

    settings = Settings()
    config = _load(config_path, settings)  # validated before anything is read
    start = _aware(since, config)
    try:
        summary = asyncio.run(
            run(
                settings,
                config,
                _input_topics(settings, config),
                start,
                app_id,
                workers or default_workers(),
                min_split=0 if workers else MIN_SPLIT,  # asked for: split whatever the size
            )
        )
    except NamespaceInUse as exc:
        click.echo(f"refused: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"replayed {summary.inputs} inputs ({summary.refused} refused as the worker would) for "
        f"{summary.customers} customers: read {summary.read_seconds:.1f} s, replay {summary.replay_seconds:.1f} s "
        f"(processes: {summary.workers}, rounds: {summary.rounds}, core: {_core()}), "
        f"write {summary.write_seconds:.1f} s"
    )
    click.echo(f"{summary.recalculated} status changes with reason recalculation, {summary.snapshots} snapshots")
    for change, count in sorted(summary.by_change.items()):
        click.echo(f"  {change}: {count}")
    if summary.not_rebuilt:
        click.echo(
            f"{summary.not_rebuilt} customers of the old namespace have no input since {since}: they start "
            "afresh on their next one"
        )
    click.echo(f"now start the workers with LOYALTY_APP_ID={app_id} LOYALTY_CONFIG={config_path}")


def _core() -> str:
    """How the core runs in this process (models/compiled.py)."""
    from models import compiled

    return "compiled" if compiled.ACTIVE else "Python"


def _aware(value: str, config: LoyaltyConfig) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=config.timezone)
    return parsed.astimezone(UTC)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
