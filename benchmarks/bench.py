"""`make bench`: the whole pipeline's throughput and latency, with its references beside it.

    python -m benchmarks.bench [--receipts 100000] [--customers 100000] [--latency-seconds 30]
                               [--skip-two-workers] [--out bench/results]

On one embedded Tansu broker, with Redis and PostgreSQL (the machine's, else
private ones from wheels), it generates a realistic month: Zipf-distributed
activity over `--customers`, 5% POS retries, 1% returns, 5% anonymous, the shipped
configuration (both status systems, every offer and message rule). Then, each in a
fresh namespace:

1. the references: a plain aiokafka consume-decode-count-produce loop, a bare
   Faust agent that only iterates, the pure core (the rules without Kafka, on one
   core, as a replay runs them) and the live core (the worker's own per-receipt
   work without Kafka: every event made and encoded, states encoded at commits),
   over the same receipts;
2. saturation: the receipts queued while one worker runs (by default without sinks,
   which run in a process of their own in production; `--sinks` puts them in the
   worker): receipts per second from its first answer to its last, how long the sinks
   took to have everything when it runs them, and the worker's memory before and after;
3. the same with two worker processes;
4. receipt -> message latency at a fixed offered load of 1,000 receipts/s, and at
   the rate step 2 measured, with the broker's and the worker's CPU;
5. the sinks (`benchmarks/sinks.py`): each sink's events/s draining a backlog of
   200,000 output events, and how long after the last receipt message a `loyalty
   sinks` process beside a worker holds everything at 1,000 receipts/s (and at
   half the rate step 2 measured, which the worker keeps up with).
6. the customers table at scale (`benchmarks/state_scale.py`): `--state-customers`
   customers' states built through the live path on each store (RocksDB, memory),
   then the worker's RSS, its data directory, bytes per customer, throughput, and
   the time from a restart to the first answered receipt.

It prints the figures and writes them to `--out` as JSON plus a PNG chart. It
asserts nothing: docs/performance.md says how its figures are read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    BERLIN,
    FETCH_MAX_WAIT_MS,
    Answers,
    Namespace,
    Stack,
    Workload,
    cpu_seconds,
    echo_latency,
    fresh_broker,
    latency,
    reference,
    rss_mib,
    stack,
)
from streams.local.probe import produce


async def references(stack: Stack, workload: Workload) -> dict[str, Any]:
    topic = f"ref-{uuid.uuid4().hex[:6]}"
    await produce(stack.bootstrap, topic, workload.records)
    found: dict[str, Any] = {}
    for kind in ("aiokafka", "faust", "core", "live-core"):
        found[kind] = await asyncio.to_thread(reference, kind, stack.bootstrap, topic, len(workload.records))
        cpu = found[kind].get("cpu_us_per_receipt") or found[kind].get("us_per_receipt") or float("nan")
        print(f"  reference {kind:<9} {found[kind]['per_second']:>9,.0f} receipts/s, {cpu:.0f} µs CPU each")
    return found


async def saturation(stack: Stack, workload: Workload, workers: int, sinks: str) -> dict[str, Any]:
    ns = Namespace(stack, sinks)
    await ns.create_database()
    try:
        for _ in range(workers):
            ns.start_worker()
        answers = await Answers(stack.bootstrap, ns.prefix + "receipt-messages").start()
        try:
            await ns.warm_up(answers, settle=2.0 if workers == 1 else 15.0)
            pids = [w.process.pid for w in ns.workers if w.process is not None]
            rss_before = [rss_mib(pid) for pid in pids]
            cpu_before = {pid: cpu_seconds(pid) for pid in [*pids, stack.broker_pid]}
            ids = set(workload.receipt_ids)
            sent = time.monotonic()
            await produce(stack.bootstrap, ns.prefix + "receipts", workload.records)
            produced = time.monotonic() - sent
            missing = await answers.wait_for(ids, timeout=3600)
            answered = [answers.arrivals[i] for i in ids if i in answers.arrivals]
            first, last = min(answered), max(answered)
            cpu = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in cpu_before}
            rss_after = [rss_mib(pid) for pid in pids]
            stored_at, stored = None, 0
            deadline = time.monotonic() + 600
            while sinks and time.monotonic() < deadline:
                stored = await ns.stored_messages()
                if stored >= len(answered):
                    stored_at = time.monotonic()
                    break
                await asyncio.sleep(0.5)
        finally:
            await answers.stop()
            ns.stop_workers()
    finally:
        await ns.drop()
    seconds = last - first
    result = {
        "workers": workers,
        "receipts": len(ids),
        "answered": len(answered),
        "unanswered": len(missing),
        "produce_seconds": produced,
        "seconds": seconds,
        "per_second": len(answered) / seconds if seconds > 0 else float("nan"),
        "sinks_caught_up_after_last_answer_s": (stored_at - last) if stored_at is not None else None,
        "stored_receipt_messages": stored,
        "worker_rss_mib_before": rss_before,
        "worker_rss_mib_after": rss_after,
        "memory_per_100k_customers_mib": (sum(rss_after) - sum(rss_before)) / workload.customers * 100_000,
        "worker_cpu_percent": [cpu[pid] / (seconds or 1) * 100 for pid in pids],
        "worker_cpu_us_per_receipt": sum(cpu[pid] for pid in pids) / max(len(answered), 1) * 1e6,
        "broker_cpu_percent": cpu[stack.broker_pid] / (seconds or 1) * 100,
    }
    print(
        f"  {workers} worker(s): {result['per_second']:>9,.0f} receipts/s "
        f"({len(answered):,} answered in {seconds:.1f}s, {len(missing)} unanswered); sinks had everything "
        f"{result['sinks_caught_up_after_last_answer_s'] or float('nan'):.1f}s after the last answer; "
        f"worker CPU {result['worker_cpu_us_per_receipt']:.0f} µs per receipt; "
        f"memory {result['memory_per_100k_customers_mib']:.0f} MiB per 100k customers"
    )
    return result


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    rates = {
        "aiokafka loop": results["references"]["aiokafka"]["per_second"],
        "bare Faust agent": results["references"]["faust"]["per_second"],
        "pure core, one core": results["references"]["core"]["per_second"],
        "pipeline, 1 worker": results["saturation"][0]["per_second"],
    }
    if len(results["saturation"]) > 1:
        rates["pipeline, 2 workers"] = results["saturation"][1]["per_second"]
    bars = left.bar(list(rates), list(rates.values()), color=["#999", "#bbb", "#ccc", "#2a7", "#185"][: len(rates)])
    left.bar_label(bars, labels=[f"{v:,.0f}" for v in rates.values()])
    left.axhline(10_000, color="#c33", linestyle="--", linewidth=1, label="target: 10,000/s per worker")
    left.set_ylabel("receipts per second")
    left.set_title("Throughput (receipts queued, all sinks on)")
    left.legend(loc="upper right")
    left.tick_params(axis="x", labelrotation=15)
    keys = ["p50_ms", "p95_ms", "p99_ms", "max_ms"]
    runs = [(f"{r['offered_per_second']:,.0f}/s offered ({r['label']})", r) for r in results["latency"]]
    if "echo" in results:  # the floor: one plain aiokafka hop at 1,000/s on the same broker
        runs.append((f"1,000/s, {results['echo']['label']}", results["echo"]))
    width = 0.8 / len(runs)
    for index, (label, run) in enumerate(runs):
        positions = [k + (index - (len(runs) - 1) / 2) * width for k in range(len(keys))]
        values = [run.get(k, 0) for k in keys]
        drawn = right.bar(positions, values, width, label=label)
        right.bar_label(drawn, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    right.axhline(50, color="#c33", linestyle="--", linewidth=1, label="target: p99 50 ms at 1,000/s")
    right.set_xticks(range(len(keys)), ["p50", "p95", "p99", "max"])
    right.set_yscale("log")
    right.set_ylabel("receipt -> receipt message, ms")
    right.set_title("Latency")
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.suptitle(f"make bench, {results['machine']['commit']} ({results['machine']['cores']} cores, Tansu)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with stack() as running:
        print(f"workload: {args.receipts:,} receipts over {args.customers:,} customers (Zipf), generating ...")
        workload = Workload.month(args.receipts, args.customers)
        print(f"  {workload.customers:,} customers bought; {len(set(workload.receipt_ids)):,} distinct receipts")
        results: dict[str, Any] = {
            "machine": {
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "commit": subprocess.run(
                    ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
                ).stdout.strip()
                or "unknown",
                "at": datetime.now(BERLIN).isoformat(timespec="seconds"),
            },
            "workload": {"receipts": args.receipts, "customers": args.customers, "buying": workload.customers},
        }
        results["sinks"] = args.sinks
        phases = set(args.only.split(","))
        if "references" in phases:
            print("references (the same receipts):")
            with fresh_broker(running) as empty:
                results["references"] = await references(empty, workload)
        saturated = args.saturation_rate
        if "saturation" in phases:
            print(f"saturation (receipts queued while the workers run; sinks: {args.sinks or 'none'}):")
            results["saturation"] = []
            for workers in (1,) if args.skip_two_workers else (1, 2):
                with fresh_broker(running) as empty:
                    results["saturation"].append(await saturation(empty, workload, workers, args.sinks))
            saturated = results["saturation"][0]["per_second"]
        if "latency" in phases:
            print("latency (paced, open loop):")
            fresh = Workload.month(int(max(1000, saturated) * args.latency_seconds) + 1000, args.customers, seed=12)
            with fresh_broker(running) as empty:
                results["echo"] = await echo_latency(empty, fresh, 1000.0, args.latency_seconds, FETCH_MAX_WAIT_MS)
            results["latency"] = []
            for rate, label in ((1000.0, "fixed"), (saturated, "saturation")):
                with fresh_broker(running) as empty:
                    results["latency"].append(
                        await latency(empty, fresh, rate, args.latency_seconds, label, args.sinks)
                    )
        if "state" in phases:
            from benchmarks import state_scale

            print(f"state ({args.state_customers:,} customers' states, each store; benchmarks/state_scale.py):")
            results["state"] = []
            for store in ("rocksdb", "memory"):
                with fresh_broker(running) as empty:
                    results["state"].append(
                        await state_scale.measure(empty, store, args.state_customers, args.state_receipts)
                    )
        if "sinks" in phases:
            from benchmarks import sinks

            results["sinks"] = await sinks.run(
                running,
                phases={"backlog", "completion"},
                events=args.sink_events,
                customers=20_000,
                rate=1000.0,
                seconds=args.latency_seconds,
                # A rate the worker keeps up with: half its saturation with sinks in it, or 300/s.
                also=results["saturation"][0]["per_second"] / 2 if "saturation" in results else 300.0,
            )
    if "saturation" not in results or "references" not in results:
        return results
    one = results["saturation"][0]["per_second"]
    results["ratios"] = {
        "pipeline_vs_aiokafka": one / results["references"]["aiokafka"]["per_second"],
        "pipeline_vs_bare_faust": one / results["references"]["faust"]["per_second"],
        "pipeline_vs_core": one / results["references"]["core"]["per_second"],
    }
    if len(results["saturation"]) > 1:
        results["ratios"]["two_workers_vs_one"] = results["saturation"][1]["per_second"] / one
    loop = results["references"]["aiokafka"]
    worker_cpu = results["saturation"][0]["worker_cpu_us_per_receipt"]
    results["ratios"]["worker_cpu_vs_aiokafka"] = worker_cpu / loop["cpu_us_per_receipt"]
    # The worker's own work without Kafka against the loop's whole: the floor of the ratio above.
    results["ratios"]["live_core_cpu_vs_aiokafka"] = (
        results["references"]["live-core"]["us_per_receipt"] / loop["cpu_us_per_receipt"]
    )
    fixed = next((run for run in results.get("latency", []) if run["label"] == "fixed"), None)
    if fixed is not None and results.get("echo", {}).get("p99_ms"):
        results["ratios"]["p99_vs_echo"] = fixed["p99_ms"] / results["echo"]["p99_ms"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--skip-two-workers", action="store_true")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument(
        "--sinks", default="", help="the workers' LOYALTY_SINKS ('' for none: the sinks run in a process of their own)"
    )
    parser.add_argument(
        "--only", default="references,saturation,latency,sinks,state", help="phases to run, comma-separated"
    )
    parser.add_argument("--state-customers", type=int, default=1_000_000, help="customers the state phase builds")
    parser.add_argument("--state-receipts", type=int, default=100_000, help="the state phase's throughput receipts")
    parser.add_argument("--sink-events", type=int, default=200_000, help="the sinks' backlog, output events")
    parser.add_argument(
        "--saturation-rate",
        type=float,
        default=2000.0,
        help="offered rate of the saturation latency run without --only saturation",
    )
    args = parser.parse_args()
    results = asyncio.run(run(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if "ratios" not in results:
        print(f"written: {out / stem}.json (no ratios without references and saturation)")
        return
    ratios = results["ratios"]
    print(
        "ratios: pipeline/aiokafka {:.3f}, pipeline/bare Faust {:.3f}, pipeline/pure core {:.3f}{}".format(
            ratios["pipeline_vs_aiokafka"],
            ratios["pipeline_vs_bare_faust"],
            ratios["pipeline_vs_core"],
            f", 2 workers/1 worker {ratios['two_workers_vs_one']:.2f}" if "two_workers_vs_one" in ratios else "",
        )
    )
    one = results["saturation"][0]
    print(
        f"targets: drained {one['per_second']:,.0f}/s (10,000), {ratios['pipeline_vs_aiokafka']:.2f} of the aiokafka"
        f" loop (0.25); worker CPU {ratios['worker_cpu_vs_aiokafka']:.1f}x the loop's (4x;"
        f" its work without Kafka alone {ratios['live_core_cpu_vs_aiokafka']:.1f}x)"
        + (f"; p99 at 1,000/s {ratios['p99_vs_echo']:.2f}x the echo's (1.5x)" if "p99_vs_echo" in ratios else "")
    )
    if "latency" not in results:
        print(f"written: {out / stem}.json")
        return
    chart(results, out / f"{stem}.png")
    print(f"written: {out / stem}.json and .png")


if __name__ == "__main__":
    main()
