"""The pure core's cost in instructions, which do not move with the machine's speed.

    python -m benchmarks.core_instructions [--receipts 8000] [--customers 4000] [--what-if | --read-events]

Wall-clock figures on a shared machine move from one minute to the next, so a
change of a few percent to the core cannot be seen in them. This counts the CPU
instructions of replaying generated receipts through the history replayer
(models/history.py, as `benchmarks.replay_speed` times it) under valgrind's
callgrind, minus a run that only loads them, and prints instructions per receipt:
the same figure for the same code and inputs whatever else the machine is doing.
By default the receipts replay as `loyalty replay` runs them: only what the states
keep is made (no offers, no snapshots), and no value is read; with `--read-events`
every event is made and its value read, as the live pipeline makes them to send them;
with `--what-if`, the receipts go through `loyalty what-if`'s replay of one
configuration (streams/whatif.replay_outcome: no message templates, events tallied).
Needs valgrind (about a minute for the default size). Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.replay_speed import END, PARTITIONS, month, replayed
from streams.envelope import partition_for

_COLLECTED = re.compile(rb"Collected : (\d+)")


def replay(path: str, *, what_if: bool, load_only: bool, read_events: bool) -> None:
    """The measured child: load the records, then (unless `load_only`) replay them."""
    from config.loading import load_config
    from models.history import HistoryRecord, Source

    config = load_config()
    with open(path, "rb") as stored:
        records = [HistoryRecord(Source(s), v, t) for s, v, t in pickle.load(stored)]
    if load_only:
        return
    if what_if:  # as `loyalty what-if` runs each configuration: no templates, its events tallied
        from streams.history.whatif import replay_outcome

        replay_outcome(config, records, lambda key: partition_for(key, PARTITIONS), PARTITIONS, END)
    else:
        replayed(config, records, until=END, read=read_events, state_only=not read_events)


def instructions(path: str, *, what_if: bool, load_only: bool, read_events: bool) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.core_instructions",
        "--child",
        path,
    ]
    command += ["--what-if"] * what_if + ["--load-only"] * load_only + ["--read-events"] * read_events
    # A fixed hash seed: string hashing decides dict and set layouts, and with them a little
    # of the count, which otherwise differs from run to run.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, check=True, env=env)
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no total: {done.stderr[-2000:]!r}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=8000)
    parser.add_argument("--customers", type=int, default=4000)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--what-if", action="store_true", help="Without receipt-message templates.")
    modes.add_argument("--read-events", action="store_true", help="Make every event's value, as the live pipeline.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        replay(args.child, what_if=args.what_if, load_only=args.load_only, read_events=args.read_events)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as workdir:
        path = str(Path(workdir) / "records.pickle")
        with open(path, "wb") as stored:
            records = month(args.customers, args.receipts)
            pickle.dump([(r.source.value, r.value, r.timestamp) for r in records], stored)
        mode_flags = {"what_if": args.what_if, "read_events": args.read_events}
        total = instructions(path, load_only=False, **mode_flags)
        loading = instructions(path, load_only=True, **mode_flags)
    per = (total - loading) / args.receipts
    mode = " as a what-if" if args.what_if else " with every event made" if args.read_events else ""
    print(f"{args.receipts:,} receipts for {args.customers:,} customers{mode}: {per / 1000:,.1f}k instructions each")


if __name__ == "__main__":
    main()
