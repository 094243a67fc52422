"""How many receipts a second one worker answers when it has a backlog.

    python -m benchmarks.saturation [--receipts 10000] [--customers 2000]

Starts the embedded broker, queues the receipts, starts one worker (sinks off)
and times it from its first answer to its last. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from streams.local.broker import EmbeddedBroker
from streams.local.generator import ReceiptFactory, TrafficShape
from streams.local.probe import OutputReader, WorkerProcess, produce, worker_env
from streams.local.service import free_port

CLOCK = "2026-11-22T12:00:00+00:00"


async def run(receipts: int, customers: int) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    factory = ReceiptFactory(TrafficShape(customers=customers, seed=11))
    start = datetime(2026, 11, 1, tzinfo=berlin)
    span = timedelta(days=20)
    values = [factory.next((start + span * (n / receipts)).replace(microsecond=0)) for n in range(receipts)]
    answered = {v["receipt_id"] for v in values if v.get("customer_id") or v.get("card_number")}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as workdir:
        prefix = f"b{uuid.uuid4().hex[:6]}-"
        env = worker_env(broker.bootstrap, prefix, workdir, free_port(), LOG_LEVEL="warning", LOYALTY_CLOCK_START=CLOCK)
        log = Path(workdir) / "worker.log"
        first = WorkerProcess(env, log).start()  # creates the topics
        reader = await OutputReader(broker.bootstrap, [prefix + "receipt-messages"]).start(timeout=120)
        first.stop()
        records = [((v.get("customer_id") or v["card_number"]).encode(), json.dumps(v).encode()) for v in values]
        await produce(broker.bootstrap, prefix + "receipts", records)
        started = time.monotonic()
        worker = WorkerProcess(env, log).start()
        try:
            await reader.wait_for(lambda: len(reader.arrivals) >= 1, timeout=300, what="the first answer")
            began = min(reader.arrivals.values())
            await reader.wait_for(lambda: answered <= reader.arrivals.keys(), timeout=1800, what="every answer")
            ended = max(reader.arrivals.values())
        finally:
            worker.stop()
            await reader.stop()
    print(f"{len(answered):,} receipts for {customers:,} customers, one worker, sinks off")
    print(f"  start to first answer: {began - started:.1f}s")
    print(f"  first to last answer:  {ended - began:.1f}s = {len(answered) / max(ended - began, 1e-9):,.0f} receipts/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=2_000)
    args = parser.parse_args()
    asyncio.run(run(args.receipts, args.customers))


if __name__ == "__main__":
    main()
