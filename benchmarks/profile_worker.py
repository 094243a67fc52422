"""Where one worker's time goes while it drains a backlog: py-spy on the live worker.

    python -m benchmarks.profile_worker [--receipts 60000] [--customers 20000] [--seconds 15] [--out DIR]

Starts an embedded broker and one worker (sinks off), queues the receipts, and records
py-spy samples of the worker (all threads, idle ones too) while it drains them. Prints the
share of samples per phase of the live path, from the innermost frame of the project or
library it falls in (compiled code shows as the Python frame that called it), and writes
the raw samples (`--out`/profile.txt, py-spy's collapsed format) for a flame graph. Needs
py-spy (`pip install py-spy`). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import Answers, Namespace, Workload, fresh_broker, stack
from streams.local.probe import produce

#: A sample's phase: the first of these found walking its stack from the innermost frame out.
PHASES = (
    ("parse", ("models/inputs.py",)),
    (
        "rules",
        (
            "models/engine.py",
            "models/messages.py",
            "models/levels.py",
            "models/periods.py",
            "models/campaigns.py",
            "models/state.py",
            "models/events.py",
            "models/frontier.py",
            "models/cards.py",
            "models/processor.py",
        ),
    ),
    ("encode outputs", ("orjson", "streams/envelope.py", "models/dead_letters.py")),
    ("produce", ("streams/sending.py", "aiokafka/producer", "aiokafka/record")),
    ("commit", ("streams/live.py",)),
    ("metrics", ("prometheus_client",)),
    ("intake", ("streams/intake.py",)),
    ("consume (aiokafka)", ("aiokafka/consumer", "aiokafka/conn", "aiokafka/client", "aiokafka/protocol")),
    ("faust", ("faust/", "mode/")),
    ("event loop", ("uvloop", "asyncio")),
)


def phase_of(stack_line: str) -> str:
    frames = stack_line.split(";")
    for frame in reversed(frames):
        for name, markers in PHASES:
            if any(marker in frame for marker in markers):
                return name
    return "other"


async def run(args: argparse.Namespace) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workload = Workload.month(args.receipts, args.customers)
    with stack() as running, fresh_broker(running) as empty:
        ns = Namespace(empty, "")
        await ns.create_database()
        try:
            worker = ns.start_worker()
            answers = await Answers(empty.bootstrap, ns.prefix + "receipt-messages").start()
            try:
                await ns.warm_up(answers, settle=2.0)
                assert worker.process is not None
                await produce(empty.bootstrap, ns.prefix + "receipts", workload.records)
                raw = out / "profile.txt"
                spy = subprocess.Popen(
                    [
                        py_spy,
                        "record",
                        "-p",
                        str(worker.process.pid),
                        "-r",
                        "200",
                        "-d",
                        str(args.seconds),
                        "-f",
                        "raw",
                        "-o",
                        str(raw),
                        "--threads",
                        "--idle",
                        *(["--native"] if args.native else []),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                started = time.monotonic()
                missing = await answers.wait_for(set(workload.receipt_ids), timeout=600)
                drained = time.monotonic() - started
                spy.wait(timeout=args.seconds + 60)
            finally:
                await answers.stop()
                ns.stop_workers()
        finally:
            await ns.drop()
    phases: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack_line, _, count = line.rpartition(" ")
        innermost = stack_line.rsplit(";", 1)[-1]
        if "(idle)" in stack_line or "select" in innermost or "epoll" in innermost:
            phases["idle (waiting)"] += int(count)
            continue
        phases[phase_of(stack_line)] += int(count)
    total = sum(phases.values()) or 1
    print(f"drained {len(workload.receipt_ids) - len(missing):,} receipts in {drained:.1f}s; py-spy samples by phase:")
    for name, samples in phases.most_common():
        print(f"  {name:<20} {samples / total:6.1%}")
    print(f"raw samples: {raw}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--out", default="bench/profile")
    parser.add_argument("--native", action="store_true", help="py-spy's native frames too")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
