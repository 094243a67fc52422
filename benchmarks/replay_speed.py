"""How fast history replays through the core: the what-if and replay commands' engine.

    python -m benchmarks.replay_speed [--customers 100000] [--receipts 300000] [--kafka] [--cache FILE]

Generates a month (November 2026) of POS traffic (Zipf-distributed customers, 5%
resends, 1% returns), then replays it under the default configuration as `loyalty
replay` does, in this one process or split across `--workers`, each process encoding
its customers and their announcements for the write (against no earlier snapshots:
one snapshot each, no status change); with `--what-if`, as
each of `loyalty what-if`'s two replays does on its own core. With
`--kafka` it also writes the month to an embedded broker and times reading it back
as the commands do. With `--cache`, the month is generated once into FILE and read
from it afterwards (3,000,000 receipts take 100 s to generate), so runs compare
identical records. Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import pickle
import resource
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from config.loading import load_config
from models.history import HistoryRecord, Replayer, Source
from models.schema import LoyaltyConfig
from streams.envelope import partition_for
from streams.history.reading import replaying
from streams.history.replay import settled
from streams.history.shards import rebuild_state
from streams.history.whatif import replay_outcome
from streams.local.generator import ReceiptFactory, TrafficShape

PARTITIONS = 4


def month(customers: int, receipts: int) -> list[HistoryRecord]:
    factory = ReceiptFactory(TrafficShape(customers=customers, seed=3))
    start = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)
    step = timedelta(days=29) / receipts
    records = []
    for n in range(receipts):
        at = start + step * n
        records.append(HistoryRecord(Source.RECEIPTS, json.dumps(factory.next(at)).encode(), at.timestamp() + 1))
    return records


def cached_month(customers: int, receipts: int, cache: Path | None) -> list[HistoryRecord]:
    """`month`, kept in `cache` (if given) the first time and read from it afterwards."""
    started = time.perf_counter()
    if cache is not None and cache.exists():
        records: list[HistoryRecord] = pickle.loads(cache.read_bytes())
        print(f"read {len(records):,} receipts from {cache} in {time.perf_counter() - started:.0f}s")
        return records
    records = month(customers, receipts)
    print(f"generated {len(records):,} receipts for {customers:,} customers in {time.perf_counter() - started:.0f}s")
    if cache is not None:
        cache.write_bytes(pickle.dumps(records))
    return records


#: The wall clock after the replayed month (the shipped configuration's zone): its periods close.
END = datetime(2026, 12, 1, 1, 0, tzinfo=ZoneInfo("Europe/Berlin"))


def replayed(
    config: LoyaltyConfig,
    records: list[HistoryRecord],
    until: datetime | None = None,
    *,
    read: bool = False,
    state_only: bool = False,
) -> tuple[Replayer, int]:
    """The records through the history replayer in this process; with `until`, the clock then
    reaches it. With `state_only`, as `loyalty replay` runs them (only what the states keep is
    made); with `read`, every event's value is made, as the live pipeline makes them to send
    them. Returns the replayer and how many events."""
    replayer = Replayer(config, lambda key: partition_for(key, PARTITIONS), PARTITIONS, state_only=state_only)
    events = 0
    with replaying():
        for record in records:
            outputs = replayer.feed(record)
            events += len(outputs)
            if read:
                for output in outputs:
                    output.value  # noqa: B018 (made when read)
        if until is not None:
            events += len(replayer.finish(until))
    return replayer, events


async def through_kafka(records: list[HistoryRecord]) -> tuple[float, int]:
    from streams.history.reading import read_history
    from streams.local.broker import EmbeddedBroker
    from streams.local.probe import produce

    with EmbeddedBroker() as broker:
        await produce(broker.bootstrap, "receipts", [(None, r.value) for r in records])
        started = time.perf_counter()
        history = await read_history(broker.bootstrap, {Source.RECEIPTS: "receipts"})
        return time.perf_counter() - started, len(history.records)


def machine_pace() -> float:
    """Seconds a fixed 20,000,000-step Python loop takes here now: a shared machine's speed
    varies from hour to hour, so
    figures printed beside this one can be compared across runs."""
    started, total = time.perf_counter(), 0
    for step in range(20_000_000):
        total += step
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--receipts", type=int, default=300_000)
    parser.add_argument("--kafka", action="store_true", help="Also time reading the month from a broker.")
    parser.add_argument(
        "--what-if", action="store_true", help="As `loyalty what-if` replays: no message templates, events tallied."
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="Split the replay by customer across this many processes."
    )
    parser.add_argument("--cache", type=Path, help="Keep the generated month in this file and read it from there.")
    args = parser.parse_args()
    records = cached_month(args.customers, args.receipts, args.cache)
    pace = machine_pace()

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started, cpu = time.perf_counter(), time.process_time()
    if args.what_if:  # what one of `loyalty what-if`'s replays runs: its events tallied as they come
        result = replay_outcome(load_config(), records, lambda key: partition_for(key, PARTITIONS), PARTITIONS, END)
        made = f"{sum(result.offers.values()):,} offers and {sum(result.changes.values()):,} status changes tallied"
        customers = len({customer for levels in result.levels.values() for customer in levels})
        refused = result.refused
    else:  # as `loyalty replay` runs, in one process or split across `--workers`, each encoding its own customers
        config = load_config()
        settle = functools.partial(settled, live={}, config=config, app_id="bench", now=END)
        rebuilt = rebuild_state(
            config, records, lambda key: partition_for(key, PARTITIONS), PARTITIONS, args.workers, END, settle=settle
        )
        replayer = rebuilt.replayer
        made = f"{rebuilt.workers} process(es), {rebuilt.rounds} round(s)"
        customers, refused = sum(len(share.states) for share in rebuilt.settled), replayer.refused
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu += children.ru_utime + children.ru_stime - before.ru_utime - before.ru_stime
    per = cpu / len(records)
    print(
        f"replayed {len(records):,} receipts in {wall:.1f}s ({cpu:.1f}s CPU in all): {per * 1e6:.0f} µs of CPU "
        f"each, {wall / len(records) * 1e6:.0f} µs of wall clock; {made}; {customers:,} customers; {refused} refused"
    )
    print(f"a fixed 20,000,000-step Python loop took {pace:.2f}s before the replay, {machine_pace():.2f}s after")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process (the month's records included): {peak:,.0f} MiB")
    print(f"3,000,000 receipts at this rate: {3_000_000 * wall / len(records) / 60:.1f} min of wall clock")
    if args.kafka:
        took, read = asyncio.run(through_kafka(records))
        print(f"read {read:,} receipts back from an embedded broker in {took:.1f}s ({read / took:,.0f}/s)")


if __name__ == "__main__":
    main()
