"""Where one worker's time goes while it drains a backlog: py-spy on the live worker.

    python -m benchmarks.profile_worker [--receipts 60000] [--customers 20000] [--seconds 15]
                                        [--out DIR] [--python-only]

Starts an embedded broker and one worker (sinks off), queues the receipts, and records
py-spy samples of the worker (every thread, idle ones too) while it drains them. The
event loop's thread does the live path's work, so its samples are sorted into phases:
each sample goes to the first phase of `PHASES` named anywhere on its stack. py-spy
reads the compiled core's native frames too (`--native`, unless `--python-only`), so
the rules, the message lines and parsing show as themselves rather than as the Python
frame that called them. The other threads' busy shares are printed after. The raw
samples (`--out`/profile.txt, py-spy's collapsed format) make a flame graph. Needs
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

#: A stack is idle when its innermost frame is one of these: an event loop waiting for sockets.
IDLE = ("(idle)", "epoll", "select (selectors.py", "Worker.execute_from_commandline")
#: A thread blocked on a condition variable near its innermost frame waits for the GIL: the
#: event loop's thread and the consumer's (Faust's, with a loop of its own) take turns with it.
GIL = ("pthread_cond_wait", "pthread_cond_timedwait")
#: A sample's phase: the first of these with a marker anywhere on its stack (the compiled core's
#: native functions are named `CPyDef_<module>___...`). The order matters: the collector and the
#: metrics run inside any phase; the table's reads, the producer and the outbox inside the
#: compiled loops of models/records.py (which hand events to the outbox) and inside commits;
#: states encoded at a commit are the compiled core's too, so commits come before the rules.
PHASES = (
    ("cyclic GC", ("gc_collect",)),
    ("metrics", ("prometheus_client", "BatchHistogram")),
    ("parse and validate", ("CPyDef_inputs___", "models/inputs.py", "decode_inputs", "input_of (")),
    ("receipt-message lines", ("CPyDef_messages___", "models/messages.py")),
    ("table reads", ("LiveStates.get", "LiveStates.peek", "DiskBacking.get", "DiskBacking.keys")),
    ("events made (their values, snapshots)", ("CPyDef_events___Output___value", "CPyDef_views___")),
    ("aiokafka producer", ("aiokafka/producer", "aiokafka/record", "aiokafka/protocol", "aiokafka/conn")),
    ("outbox", ("streams/sending.py",)),
    ("commit: snapshots and states encoded", ("Intake.commit", "LiveStates.snapshot", "DiskBacking.write")),
    ("publish: events encoded", ("CPyDef_records___send_events", "Intake._publish")),
    ("intake: routing, order, per-input loop", ("CPyDef_records___route_receipts",)),
    ("rules", ("CPyDef_", "models/")),
    ("intake: routing, order, per-input loop", ("streams/intake.py", "streams/envelope.py")),
    ("aiokafka consumer", ("aiokafka/",)),
    ("faust and timers", ("faust/", "mode/", "streams/timers/")),
)


def phase_of(frames: list[str]) -> str:
    for name, markers in PHASES:
        if any(marker in frame for frame in frames for marker in markers):
            return name
    return "other"


def state_of(frames: list[str]) -> str:
    """idle, waiting for the GIL, or busy."""
    if any(marker in frames[-1] or marker in frames[0] for marker in IDLE):
        return "idle"
    if any(marker in frame for frame in frames[-2:] for marker in GIL):
        return "waiting for the GIL"
    return "busy"


def summary(raw: Path) -> list[str]:
    """The event loop thread's samples by phase, then how every other thread spends its samples."""
    phases: collections.Counter[str] = collections.Counter()
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack_line, _, count = line.rpartition(" ")
        frames = stack_line.split(";")
        thread, samples, state = frames[0], int(count), state_of(frames)
        if "MainThread" in thread:
            phases[phase_of(frames[1:]) if state == "busy" else state] += samples
        else:
            threads[thread][state] += samples
    main = sum(phases.values()) or 1
    lines = ["event loop thread (the live path), share of its samples by phase:"]
    lines += [f"  {name:<40} {samples / main:6.1%}" for name, samples in phases.most_common()]
    lines.append("other threads, share of their samples:")
    for thread, states in sorted(threads.items()):
        every = sum(states.values()) or 1
        shares = ", ".join(f"{state} {samples / every:.1%}" for state, samples in states.most_common())
        lines.append(f"  {thread}: {shares}")
    return lines


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
                        *([] if args.python_only else ["--native"]),
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
    print(f"drained {len(workload.receipt_ids) - len(missing):,} receipts in {drained:.1f}s; py-spy samples:")
    print("\n".join(summary(raw)))
    print(f"raw samples: {raw}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--out", default="bench/profile")
    parser.add_argument("--python-only", action="store_true", help="without py-spy's native frames")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
