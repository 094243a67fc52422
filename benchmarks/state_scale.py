"""The customers table at scale: memory, disk and restart time per store.

    python -m benchmarks.state_scale [--customers 1000000] [--stores rocksdb,memory]
                                     [--throughput-receipts 100000] [--out bench/results]

For each store (`LOYALTY_STORE`), on a fresh embedded broker, one worker without sinks:

1. builds `--customers` customers' states through the live path: one receipt each
   (customer ids of their own), produced while the worker runs, every one answered;
2. throughput: `--throughput-receipts` more receipts queued (Zipf over the same
   customers, so most states are read back, from the cache or the store), receipts
   per second from the first answer to the last;
3. the worker's RSS, the size of its data directory, and the state's bytes per
   customer (median and p99 of the encoded states, read from the local store);
4. restart: the worker is stopped (SIGTERM) and started again on the same data
   directory with a receipt already waiting for it; the time from the new process's
   start to that receipt's message.

It prints the figures and writes them to `--out` as JSON. It asserts nothing:
docs/performance.md ("State") quotes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.harness import BERLIN, Answers, Namespace, Stack, fresh_broker, rss_mib, stack, warm_receipt
from streams.local.probe import produce

CHUNK = 50_000


def receipt(receipt_id: str, customer: str, n: int) -> bytes:
    value = warm_receipt(receipt_id, customer)
    value["issued_at"] = f"2026-11-{1 + n % 20:02d}T{8 + n % 12:02d}:{n % 60:02d}:00+01:00"
    value["total"] = f"{10 + n % 90}.50"
    return json.dumps(value).encode()


def one_each(customers: int) -> Iterator[list[tuple[bytes, bytes]]]:
    for start in range(0, customers, CHUNK):
        yield [(f"C-{n}".encode(), receipt(f"B-{n}", f"C-{n}", n)) for n in range(start, min(customers, start + CHUNK))]


def zipf_receipts(count: int, customers: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(min(customers, 200_000))]
    picks = rng.choices(range(len(weights)), weights=weights, k=count)
    # Spread the ranks over all customers, so hot customers are not all the first ones built.
    stride = max(customers // len(weights), 1)
    return [(f"C-{p * stride}".encode(), receipt(f"T-{n}", f"C-{p * stride}", n)) for n, p in enumerate(picks)]


def du_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def state_sizes(data_dir: Path) -> list[int]:
    """The encoded customer states in the worker's local RocksDB databases (customers only)."""
    from rocksdict import AccessType, Options, Rdict

    sizes: list[int] = []
    for db_path in sorted(data_dir.rglob("*customers-*.db")):
        db = Rdict(str(db_path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                if isinstance(key, bytes) and key.startswith(b"C-") and isinstance(value, bytes):
                    sizes.append(len(value))
        finally:
            db.close()
    return sizes


async def answered(answers: Answers, ids: set[str], what: str) -> tuple[float, float]:
    missing = await answers.wait_for(ids, timeout=7200)
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(ids)} {what} were never answered")
    times = [answers.arrivals[i] for i in ids]
    return min(times), max(times)


async def measure(running: Stack, store: str, customers: int, throughput_receipts: int) -> dict[str, Any]:
    ns = Namespace(running, sinks="")
    data_dir = running.workdir / ns.name / "data"
    overrides = {"LOYALTY_STORE": store, "LOYALTY_DATA_DIR": str(data_dir)}
    worker = ns.start_worker(**overrides)
    answers = await Answers(running.bootstrap, ns.prefix + "receipt-messages").start()
    try:
        await ns.warm_up(answers, settle=2.0)
        assert worker.process is not None
        rss_before = rss_mib(worker.process.pid)
        built_from = time.monotonic()
        for chunk in one_each(customers):
            await produce(running.bootstrap, ns.prefix + "receipts", chunk)
        first, last = await answered(answers, {f"B-{n}" for n in range(customers)}, "building receipts")
        build_seconds = time.monotonic() - built_from
        print(
            f"  {store}: {customers:,} customers built in {build_seconds:.0f} s ({customers / (last - first):,.0f}/s)"
        )
        await asyncio.sleep(3.0)  # a commit or two: the last states stored
        rss_built = rss_mib(worker.process.pid)
        traffic = zipf_receipts(throughput_receipts, customers)
        await produce(running.bootstrap, ns.prefix + "receipts", traffic)
        first, last = await answered(answers, {f"T-{n}" for n in range(throughput_receipts)}, "traffic receipts")
        per_second = throughput_receipts / (last - first)
        await asyncio.sleep(3.0)
        rss_after = rss_mib(worker.process.pid)
        assert worker.stop() == 0
        disk = du_mib(data_dir)
        sizes = state_sizes(data_dir) if store == "rocksdb" else []
        # Restart: a receipt waits for the new process; the time to its message.
        probe = receipt("RESTART-1", "C-0", 1)
        await produce(running.bootstrap, ns.prefix + "receipts", [(b"C-0", probe)])
        started = time.monotonic()
        worker = ns.start_worker(**overrides)
        missing = await answers.wait_for({"RESTART-1"}, timeout=1800)
        restart_seconds = time.monotonic() - started if not missing else float("nan")
        assert worker.process is not None
        await asyncio.sleep(2.0)
        rss_restarted = rss_mib(worker.process.pid)
    finally:
        await answers.stop()
        ns.stop_workers()
    quantiles = statistics.quantiles(sizes, n=100) if len(sizes) > 1 else []
    result = {
        "store": store,
        "customers": customers,
        "build_seconds": build_seconds,
        "throughput_receipts": throughput_receipts,
        "receipts_per_second": per_second,
        "worker_rss_mib": {
            "warm": rss_before,
            "built": rss_built,
            "after_traffic": rss_after,
            "restarted": rss_restarted,
        },
        "memory_per_customer_bytes": (rss_after - rss_before) * 2**20 / customers,
        "data_dir_mib": disk,
        "state_bytes": {"median": quantiles[49], "p99": quantiles[98], "mean": statistics.fmean(sizes)}
        if quantiles
        else None,
        "restart_to_first_answer_s": restart_seconds,
    }
    state: dict[str, float] | None = result["state_bytes"]  # type: ignore[assignment]
    print(
        f"  {store}: {per_second:,.0f} receipts/s; RSS {rss_after:,.0f} MiB after traffic "
        f"({result['memory_per_customer_bytes']:,.0f} bytes per customer over the warm worker), "
        f"{rss_restarted:,.0f} MiB after a restart; data directory {disk:,.0f} MiB"
        + (f"; state {state['median']:.0f} bytes median, {state['p99']:.0f} p99" if state else "")
        + f"; restart to first answer {restart_seconds:.1f} s"
    )
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
            ).stdout.strip(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "zone": str(BERLIN),
        },
        "runs": [],
    }
    with stack() as running:
        for store in args.stores.split(","):
            with fresh_broker(running) as empty:
                results["runs"].append(await measure(empty, store, args.customers, args.throughput_receipts))
    runs = {r["store"]: r for r in results["runs"]}
    if "rocksdb" in runs and "memory" in runs:
        ratio = runs["rocksdb"]["receipts_per_second"] / runs["memory"]["receipts_per_second"]
        results["rocksdb_vs_memory_throughput"] = ratio
        print(f"throughput rocksdb/memory: {ratio:.2f}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--stores", default="rocksdb,memory", help="LOYALTY_STORE values, comma-separated, in order")
    parser.add_argument("--throughput-receipts", type=int, default=100_000)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"state-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
