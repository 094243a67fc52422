"""Receipt latency while a worker closes a month for every customer it holds.

    python -m benchmarks.close_walk_live [--customers 20000] [--rate 100]

Loads the customers (one October receipt each), then sends November receipts at
`rate` a second: the first one past October's end plus the grace moves the close
frontier, and the worker walks all the customers while it keeps answering. Prints
the walk's duration and the receipt-to-message latency before, during and after
it. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.local.broker import EmbeddedBroker
from streams.local.probe import OutputReader, WorkerProcess, produce, worker_env
from streams.local.service import free_port

CLOCK = "2026-11-22T12:00:00+00:00"


def receipt(receipt_id: str, customer: str, issued_at: str, total: str) -> dict[str, Any]:
    return {
        "receipt_id": receipt_id,
        "type": "sale",
        "customer_id": customer,
        "pos_id": "POS1",
        "store_id": "S1",
        "issued_at": issued_at,
        "currency": "EUR",
        "total": total,
    }


def percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    q = statistics.quantiles(values, n=100)
    return f"p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, max {max(values) * 1000:.0f} ms ({len(values)})"


async def run(customers: int, rate: float, no_close: bool) -> None:
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as workdir:
        prefix = f"w{uuid.uuid4().hex[:6]}-"
        env = worker_env(broker.bootstrap, prefix, workdir, free_port(), LOG_LEVEL="info", LOYALTY_CLOCK_START=CLOCK)
        log = Path(workdir) / "worker.log"
        worker = WorkerProcess(env, log).start()
        reader = await OutputReader(broker.bootstrap, [prefix + "receipt-messages"]).start(timeout=120)
        try:
            october = [
                receipt(f"O-{n}", f"C-{n:07d}", f"2026-10-{n % 28 + 1:02d}T12:00:00+02:00", f"{n % 300}.50")
                for n in range(customers)
            ]
            loaded = time.monotonic()
            await produce(
                broker.bootstrap,
                prefix + "receipts",
                [(r["customer_id"].encode(), json.dumps(r).encode()) for r in october],
            )
            await reader.wait_for(lambda: len(reader.arrivals) >= customers, timeout=3600, what="the load")
            print(f"loaded {customers:,} customers in {time.monotonic() - loaded:.0f}s")

            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
            await producer.start()
            sent: dict[str, float] = {}
            # 10 s of late-October receipts, then November (past 1 November 01:00, Berlin).
            # --no-close: the same traffic without crossing the month end, to tell the walk's cost from the rest.
            november = "2026-10-31T21:00:00+01:00" if no_close else "2026-11-02T10:00:00+01:00"
            plan = [("L", "2026-10-31T20:00:00+01:00")] * int(rate * 10) + [("N", november)] * int(rate * 60)
            began, deliveries = time.monotonic(), []
            for n, (kind, issued_at) in enumerate(plan):
                value = receipt(f"{kind}-{n}", f"C-{(n * 7919) % customers:07d}", issued_at, "3.00")
                sent[value["receipt_id"]] = time.monotonic()
                key = value["customer_id"].encode()
                deliveries.append(await producer.send(prefix + "receipts", json.dumps(value).encode(), key=key))
                await asyncio.sleep(max(began + (n + 1) / rate - time.monotonic(), 0))  # paced, not closed-loop
            await asyncio.gather(*deliveries)
            await producer.stop()
            await reader.wait_for(lambda: sent.keys() <= reader.arrivals.keys(), timeout=3600, what="the answers")
        finally:
            worker.stop()
            await reader.stop()
        text = log.read_text(errors="replace")
    walks = re.findall(r"close walk to \{'monthly_amount': '2026-11'.*?done, (\d+) customers closed, ([\d.]+)s", text)
    closed = sum(int(c) for c, _ in walks)
    longest = max((float(s) for _, s in walks), default=0.0)
    print(f"walk to November: {closed:,} customers closed on {len(walks)} partitions, the longest took {longest:.1f}s")
    latency = {rid: reader.arrivals[rid] - at for rid, at in sent.items()}
    first_november = min(at for rid, at in sent.items() if rid.startswith("N-"))
    longest = longest or 30.0  # --no-close: compare the same windows
    during = [v for rid, v in latency.items() if rid.startswith("N-") and sent[rid] - first_november <= longest]
    after = [v for rid, v in latency.items() if rid.startswith("N-") and sent[rid] - first_november > longest]
    print(f"receipt -> message before the walk: {percentiles([v for r, v in latency.items() if r.startswith('L-')])}")
    print(f"receipt -> message during the walk: {percentiles(during)}")
    print(f"receipt -> message after the walk:  {percentiles(after)}")
    arrived = [reader.arrivals[rid] - first_november for rid in sent]
    window = [a for a in arrived if 0 <= a <= longest]
    print(f"answers per second during the walk: {len(window) / longest:,.0f} (offered {rate:,.0f}/s)")
    print("timeline from the first November receipt (5 s buckets):")
    buckets: dict[int, list[float]] = {}
    for rid, delay in latency.items():
        if rid.startswith("N-"):
            buckets.setdefault(int((sent[rid] - first_november) // 5), []).append(delay)
    for bucket, values in sorted(buckets.items()):
        print(f"  {bucket * 5:>3}-{bucket * 5 + 5:<3}s  {percentiles(values)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--no-close", action="store_true", help="the same traffic, all before the month's end")
    args = parser.parse_args()
    asyncio.run(run(args.customers, args.rate, args.no_close))


if __name__ == "__main__":
    main()
