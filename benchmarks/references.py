"""The references `make bench` measures the pipeline against, each in a process of its own.

    python -m benchmarks.references aiokafka BOOTSTRAP TOPIC COUNT
    python -m benchmarks.references faust BOOTSTRAP TOPIC COUNT
    python -m benchmarks.references core BOOTSTRAP TOPIC COUNT
    python -m benchmarks.references live-core BOOTSTRAP TOPIC COUNT
    python -m benchmarks.references echo BOOTSTRAP TOPIC FETCH_MAX_WAIT_MS

`aiokafka` is the floor of what Python can do with a Kafka topic here: a plain
consumer loop that decodes every receipt, counts it for its customer and produces
one small answer per receipt. `faust` is a bare Faust agent over the same topic
that only counts events: what Faust's per-event machinery costs by itself. `core`
is the rules alone: the records are read first, untimed, then run through the
history replayer (models/history.py: parsing, the engine, the close frontier and the
daily campaigns, as a worker runs them for each input), timed in CPU seconds of
its one core. `live-core` is the worker's own work without Kafka: the records, read
first, go through the loops the live path runs (models/records.py: parsing, routing,
the partition processor, every event made and encoded) over the worker's record
cache in memory, with a commit's work (the waiting snapshots encoded, every changed
state encoded and stored) every `LIVE_COMMIT_EVERY` receipts, timed in CPU seconds;
what a worker spends per receipt beyond it goes to Kafka, Faust and the I/O. Each
reads COUNT records that are already in TOPIC and prints one JSON line with its
rate (the Kafka ones timed from their first record to their last). `echo` is the
latency reference: one plain consume-produce hop that answers each receipt at once,
until it is killed. Asserts nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from models.events import OutputKind


async def aiokafka_loop(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=10
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    counts: Counter[str] = Counter()
    seen, first, cpu_first, pending = 0, 0.0, 0.0, []
    try:
        while seen < count:
            batches = await consumer.getmany(timeout_ms=100, max_records=5000)
            for records in batches.values():
                for record in records:
                    if not seen:
                        first, cpu_first = time.perf_counter(), time.process_time()
                    receipt = orjson.loads(record.value)
                    customer = receipt.get("customer_id") or receipt.get("card_number")
                    counts[customer] += 1
                    answer = orjson.dumps({"receipt_id": receipt["receipt_id"], "count": counts[customer]})
                    pending.append(await producer.send(topic + "-answers", answer, key=record.key))
                    seen += 1
            if len(pending) > 10_000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
        took, cpu = time.perf_counter() - first, time.process_time() - cpu_first
    finally:
        await producer.stop()
        await consumer.stop()
    return {
        "reference": "aiokafka",
        "records": seen,
        "seconds": took,
        "per_second": seen / took,
        "cpu_us_per_receipt": cpu / seen * 1e6,
    }


FAUST_APP = """
import os, sys, time, faust
import streams.transport
app = faust.App("bare-{token}", broker=streams.transport.broker_url({bootstrap!r}, fetch_max_wait_ms=10),
    store="memory://", key_serializer="raw", value_serializer="raw", web_enabled=False,
    consumer_auto_offset_reset="earliest", datadir={datadir!r}, broker_session_timeout=6,
    broker_heartbeat_interval=1)
seen = [0, 0.0]
@app.agent(app.topic({topic!r}, key_type=bytes, value_type=bytes))
async def count(stream):
    async for event in stream.events():
        if not seen[0]:
            seen[1] = time.perf_counter()
        seen[0] += 1
        if seen[0] >= {count}:
            with open({result!r}, "w") as result:  # Faust's worker sends print() to its log
                result.write(str(time.perf_counter() - seen[1]))
            os._exit(0)
"""


def faust_bare(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    import subprocess

    with tempfile.TemporaryDirectory() as workdir:
        result = os.path.join(workdir, "result")
        source = FAUST_APP.format(
            token=os.urandom(4).hex(), bootstrap=bootstrap, topic=topic, count=count, datadir=workdir, result=result
        )
        with open(os.path.join(workdir, "bare_app.py"), "w", encoding="utf-8") as module:
            module.write(source)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([workdir, os.getcwd(), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(
            [sys.executable, "-m", "faust", "-A", "bare_app", "worker", "-l", "warn"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if not os.path.exists(result):
            raise RuntimeError(f"the bare Faust agent did not finish: {done.stderr[-2000:]}")
        with open(result, encoding="utf-8") as written:
            took = float(written.read())
    return {"reference": "faust", "records": count, "seconds": took, "per_second": count / took}


async def echo(bootstrap: str, topic: str, fetch_max_wait_ms: int) -> None:
    """The latency reference: answers every record of `topic` on `topic-echo` at once, until killed."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await consumer.start()
    await producer.start()
    while True:
        batches = await consumer.getmany(timeout_ms=100, max_records=5000)
        for records in batches.values():
            for record in records:
                receipt = orjson.loads(record.value)
                answer = orjson.dumps({"receipt_id": receipt["receipt_id"], "lines": []})
                await producer.send(topic + "-echo", answer, key=record.key)


async def _read_all(bootstrap: str, topic: str, count: int) -> list[tuple[bytes, float]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=10
    )
    await consumer.start()
    read: list[tuple[bytes, float]] = []
    try:
        while len(read) < count:
            batches = await consumer.getmany(timeout_ms=100, max_records=5000)
            read += [(r.value, r.timestamp / 1000) for records in batches.values() for r in records]
    finally:
        await consumer.stop()
    return read


def core_loop(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    from benchmarks.replay_speed import replayed
    from config.loading import load_config
    from models.history import HistoryRecord, Source

    records = [HistoryRecord(Source.RECEIPTS, v, t) for v, t in asyncio.run(_read_all(bootstrap, topic, count))]
    started = time.process_time()
    replayed(load_config(), records)
    took = time.process_time() - started
    return {
        "reference": "core",
        "records": len(records),
        "seconds": took,
        "per_second": len(records) / took,
        "us_per_receipt": took / len(records) * 1e6,
    }


#: Receipts between two commits of `live-core`: about what a worker takes in its 0.5 s commit interval.
LIVE_COMMIT_EVERY = 4000


class _Record(NamedTuple):
    value: bytes
    key: bytes | None
    offset: int
    timestamp: int


def live_core(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    return live_core_run(asyncio.run(_read_all(bootstrap, topic, count)))


def live_core_run(read: list[tuple[bytes, float]]) -> dict[str, Any]:
    """`live-core` over records already read: (value, log time in epoch seconds)."""
    from config.loading import load_config
    from models.events import Output
    from models.processor import Outcome, TableProcessor
    from models.records import route_receipts, send_events, send_snapshots, take_all
    from streams.collector import Collector
    from streams.envelope import partition_for
    from streams.live import LiveStates
    from streams.store import MemoryBacking

    records = [_Record(value, None, n, int(at * 1000)) for n, (value, at) in enumerate(read)]
    config = load_config()
    live = LiveStates(MemoryBacking({}))
    processor = TableProcessor(config, lambda key: partition_for(key, 1), 1, table=live, spill_receipts=True)
    topics = {kind: kind.value for kind in OutputKind}
    sent: list[int] = [0]

    def add(topic: str, key: bytes | None, value: bytes) -> None:
        sent[0] += 1

    snapshots: dict[str | None, Output] = {}
    refused = 0
    collector = Collector()  # as the worker's (streams/intake.py)
    collector.start()
    started = time.process_time()
    for start in range(0, len(records), LIVE_COMMIT_EVERY):
        batch = records[start : start + LIVE_COMMIT_EVERY]
        now = datetime.fromtimestamp(batch[-1].timestamp / 1000, UTC)
        out = Outcome()
        routed = route_receipts(batch, "receipts", 0, config, now, processor, True, (OSError,))
        refused += len(routed.refused) + len(routed.failed)
        take_all(processor, 0, routed.here, out, set(), (OSError,))
        send_events(out.outputs, snapshots, topics, add)
        send_snapshots(snapshots, topics[OutputKind.CUSTOMER_STATUS], add)
        live.store(live.snapshot(), {})
        collector.committed()
    took = time.process_time() - started
    return {
        "reference": "live-core",
        "records": len(records),
        "events": sent[0],
        "refused": refused,
        "seconds": took,
        "per_second": len(records) / took,
        "us_per_receipt": took / len(records) * 1e6,
    }


def main() -> None:
    kind, bootstrap, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if kind == "aiokafka":
        result = asyncio.run(aiokafka_loop(bootstrap, topic, count))
    elif kind == "faust":
        result = faust_bare(bootstrap, topic, count)
    elif kind == "core":
        result = core_loop(bootstrap, topic, count)
    elif kind == "live-core":
        result = live_core(bootstrap, topic, count)
    elif kind == "echo":
        asyncio.run(echo(bootstrap, topic, fetch_max_wait_ms=count))
        return
    else:
        raise SystemExit(f"unknown reference {kind!r}: aiokafka, faust, core, live-core or echo")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
