"""What closing a month costs per customer, and for a million of them.

    python -m benchmarks.period_close [--customers 1000000]

Builds encoded customer states that bought in October (as the table holds them),
then walks them as a partition's close walk does: decode, test, close, encode.
Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from decimal import Decimal

from config.loading import load_config
from models.engine import apply_receipt, close_due, is_due
from models.frontier import frontier_at
from models.inputs import Receipt
from models.state import CustomerState


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    args = parser.parse_args()
    config = load_config()
    started = time.perf_counter()
    table: dict[bytes, bytes] = {}
    for n in range(args.customers):
        customer = f"C-{n:07d}"
        receipt = Receipt(
            receipt_id=f"R-{n}",
            type="sale",
            customer_id=customer,
            card_number=None,
            pos_id="POS1",
            store_id="S1",
            issued_at=datetime.fromisoformat(f"2026-10-{n % 28 + 1:02d}T12:00:00+02:00"),
            currency="EUR",
            total=Decimal(n % 300) + Decimal("0.50"),
        )
        result = apply_receipt(None, receipt, config)
        assert result.state is not None
        table[customer.encode()] = result.state.to_bytes()
    print(f"built {len(table):,} states in {time.perf_counter() - started:.1f}s")

    frontier = frontier_at(datetime.fromisoformat("2026-11-01T02:00:00+01:00"), config)
    started = time.perf_counter()
    closed = events = 0
    for key, stored in table.items():
        state = CustomerState.from_bytes(stored)
        if not is_due(state, frontier):
            continue
        events += len(close_due(state, frontier, "R-frontier", config).outputs)
        table[key] = state.to_bytes()
        closed += 1
    walk = time.perf_counter() - started
    print(
        f"close walk: {closed:,} customers closed ({events:,} events) in {walk:.1f}s of CPU, "
        f"{walk / max(closed, 1) * 1e6:.0f} us per customer"
    )
    started = time.perf_counter()
    for stored in table.values():
        is_due(CustomerState.from_bytes(stored), frontier)
    skip = time.perf_counter() - started
    print(f"walk over the same customers again (nothing due): {skip:.1f}s, {skip / len(table) * 1e6:.0f} us each")
    # In a worker the walk takes at most about two fifths of the agent's time (streams/agents.py: WALK_*),
    # and publishing the events costs more on top.
    print(f"at two fifths of one core: at least {walk / 0.4 / 60:.1f} minutes for the whole table on one worker")


if __name__ == "__main__":
    main()
