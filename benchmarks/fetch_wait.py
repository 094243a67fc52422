"""What the consumers' fetch wait costs on the embedded broker: latency and broker CPU.

    python -m benchmarks.fetch_wait [--rate 1000] [--seconds 20] [--waits 1500,500,100,50,10] [--sinks ''] [--echo]

Tansu answers a fetch only when the fetch's `fetch_max_wait_ms` has run out, even
when data arrived earlier; Faust's own driver hard-codes 1500 ms. For each wait
(`KAFKA_FETCH_MAX_WAIT_MS`, every consumer of the worker) this runs one worker in
a fresh namespace at a fixed offered load and prints receipt -> message latency
with the broker's and the worker's CPU. With `--echo` it measures one plain aiokafka
hop instead (consume, decode, produce an answer, the same wait on its consumer):
the floor any pipeline on this broker stands on. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from benchmarks.harness import Workload, echo_latency, fresh_broker, latency, stack


async def run(args: argparse.Namespace) -> None:
    with stack() as running:
        workload = Workload.month(int(args.rate * args.seconds) + 1000, args.customers, seed=21)
        rows = []
        for wait in (int(w) for w in args.waits.split(",")):
            overrides = {"KAFKA_FETCH_MAX_WAIT_MS": str(wait), "KAFKA_SINK_FETCH_MAX_WAIT_MS": str(max(wait, 250))}
            with fresh_broker(running) as empty:
                if args.echo:
                    result = await echo_latency(empty, workload, args.rate, args.seconds, wait)
                    rows.append({"fetch_max_wait_ms": wait, **result})
                    continue
                result = await latency(
                    empty, workload, args.rate, args.seconds, f"wait {wait} ms", args.sinks, overrides
                )
            rows.append({"fetch_max_wait_ms": wait, **result})
        print(json.dumps(rows, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--waits", default="1500,500,100,50,10")
    parser.add_argument("--sinks", default="", help="the workers' LOYALTY_SINKS (none by default: the broker alone)")
    parser.add_argument("--echo", action="store_true", help="One plain aiokafka hop instead of the pipeline.")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
