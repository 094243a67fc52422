"""`loyalty replay` end to end: read a month from an embedded broker, replay it, write the namespace.

    python -m benchmarks.replay_command [--customers 100000] [--receipts 3000000] [--workers 1 2] [--cache FILE]

Writes the month of benchmarks/replay_speed (November 2026, Zipf-distributed customers)
to the `receipts` topic (4 partitions) of an embedded broker, then runs the command once
for each `--workers` figure (a figure given twice runs twice), each into a namespace of
its own, and prints what the command printed with its wall-clock time, beside the pace of
a fixed Python loop just before and after it (`replay_speed.machine_pace`: a shared
machine's speed varies from hour to hour). `--cache` as in benchmarks.replay_speed.
Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from config.loading import DEFAULT_CONFIG
from streams.local.broker import EmbeddedBroker
from streams.local.probe import produce

from .replay_speed import PARTITIONS, cached_month, machine_pace


async def written(bootstrap: str, values: list[bytes]) -> float:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("receipts", PARTITIONS, 1)])
    finally:
        await admin.close()
    started = time.perf_counter()
    await produce(bootstrap, "receipts", [(None, value) for value in values])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--receipts", type=int, default=3_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache", type=Path, help="Keep the generated month in this file and read it from there.")
    args = parser.parse_args()
    records = cached_month(args.customers, args.receipts, args.cache)
    with EmbeddedBroker() as broker:
        took = asyncio.run(written(broker.bootstrap, [r.value for r in records]))
        print(f"wrote {len(records):,} receipts for {args.customers:,} customers in {took:.0f}s")
        del records
        env = os.environ | {"KAFKA_BOOTSTRAP": broker.bootstrap, "LOYALTY_TOPIC_PREFIX": ""}
        for run, workers in enumerate(args.workers, 1):  # a namespace each: a replay builds only new ones
            command = [sys.executable, "-m", "streams.cli", "replay", "--config", str(DEFAULT_CONFIG)]
            command += ["--from", "2026-11-01", "--app-id", f"bench-{run}-{workers}", "--workers", str(workers)]
            pace = machine_pace()
            started = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            print(
                f"--workers {workers}: {wall:.1f}s in all (exit {done.returncode}); a fixed 20,000,000-step "
                f"Python loop took {pace:.2f}s before it, {machine_pace():.2f}s after"
            )
            lines = (done.stdout + done.stderr).strip().splitlines()
            for line in lines[:3] if done.returncode == 0 else lines[-12:]:
                print(f"  {line}")


if __name__ == "__main__":
    main()
