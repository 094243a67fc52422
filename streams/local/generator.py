"""Realistic POS traffic: Zipf-distributed customers, log-normal baskets, POS retries, a few returns.

With `simulate_from`, receipt timestamps sweep from that instant to now over the
run, so a short demo crosses month ends and shows period closes; otherwise they
are the wall clock.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaProducer

CENT = Decimal("0.01")


@dataclass
class TrafficShape:
    customers: int = 1000
    zipf_s: float = 1.1
    anonymous_share: float = 0.05
    retry_share: float = 0.05
    return_share: float = 0.01
    stores: int = 5
    tills_per_store: int = 4
    median_basket: float = 35.0
    seed: int = 7


@dataclass
class ReceiptFactory:
    """Makes receipt dicts; deterministic for a given shape and seed."""

    shape: TrafficShape
    currency: str = "EUR"
    _rng: random.Random = field(init=False)
    _weights: list[float] = field(init=False)
    _serial: itertools.count[int] = field(init=False)
    _recent: list[dict[str, Any]] = field(init=False, default_factory=list)
    _returned: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.shape.seed)
        ranks = range(1, self.shape.customers + 1)
        self._weights = list(itertools.accumulate(1 / r**self.shape.zipf_s for r in ranks))
        self._serial = itertools.count(1)

    def customer_id(self, index: int) -> str:
        return f"C-{index:06d}"

    def next(self, issued_at: datetime) -> dict[str, Any]:
        rng, shape = self._rng, self.shape
        if self._recent and rng.random() < shape.retry_share:
            return rng.choice(self._recent)  # the POS did not see an ack and sends it again
        sales = [
            r
            for r in self._recent
            if r["type"] == "sale" and r.get("customer_id") and r["receipt_id"] not in self._returned
        ]
        if sales and rng.random() < shape.return_share:
            receipt = self._return_of(rng.choice(sales), issued_at)
            self._returned.add(receipt["original_receipt_id"])  # a till returns a receipt once
        else:
            receipt = self._sale(issued_at)
        self._recent.append(receipt)
        if len(self._recent) > 200:
            self._recent.pop(0)
        return receipt

    def _till(self) -> tuple[str, str]:
        store = self._rng.randrange(self.shape.stores) + 1
        till = self._rng.randrange(self.shape.tills_per_store) + 1
        return f"S{store}", f"S{store}-POS{till}"

    def _sale(self, issued_at: datetime) -> dict[str, Any]:
        rng, shape = self._rng, self.shape
        store_id, pos_id = self._till()
        lines = []
        for _n in range(rng.choice((1, 1, 2, 3, 4))):
            price = Decimal(str(round(rng.lognormvariate(math.log(shape.median_basket / 2), 0.8), 2)))
            lines.append(
                {"sku": f"SKU-{rng.randrange(5000)}", "qty": rng.choice((1, 1, 1, 2)), "price": str(max(price, CENT))}
            )
        total = sum((Decimal(str(line["price"])) * int(line["qty"]) for line in lines), Decimal(0))
        receipt: dict[str, Any] = {
            "receipt_id": f"{pos_id}-{next(self._serial):08d}",
            "type": "sale",
            "pos_id": pos_id,
            "store_id": store_id,
            "issued_at": issued_at.isoformat(),
            "currency": self.currency,
            "total": str(total.quantize(CENT)),
            "lines": lines,
        }
        if rng.random() < shape.anonymous_share:
            receipt["card_number"] = f"9{rng.randrange(10**9):09d}"
        else:
            index = rng.choices(range(1, shape.customers + 1), cum_weights=self._weights)[0]
            receipt["customer_id"] = self.customer_id(index)
        return receipt

    def _return_of(self, sale: dict[str, Any], issued_at: datetime) -> dict[str, Any]:
        return {
            "receipt_id": f"{sale['pos_id']}-R{next(self._serial):08d}",
            "type": "return",
            "original_receipt_id": sale["receipt_id"],
            "customer_id": sale["customer_id"],
            "pos_id": sale["pos_id"],
            "store_id": sale["store_id"],
            "issued_at": max(issued_at, datetime.fromisoformat(sale["issued_at"])).isoformat(),
            "currency": sale["currency"],
            "total": sale["total"],
        }


@dataclass
class GeneratorStats:
    sent: int = 0
    sent_at: dict[str, float] = field(default_factory=dict)  # receipt id -> monotonic time of first send


async def generate(
    bootstrap: str,
    topic: str,
    *,
    rate: float,
    duration: float,
    shape: TrafficShape,
    tz_now: Callable[[], datetime] = lambda: datetime.now(UTC),
    simulate_from: datetime | None = None,
    stats: GeneratorStats | None = None,
    stop: asyncio.Event | None = None,
) -> GeneratorStats:
    """Sends receipts at `rate` per second for `duration` seconds (until `stop` is set)."""
    stats = stats or GeneratorStats()
    factory = ReceiptFactory(shape)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await producer.start()
    try:
        started = time.monotonic()
        end_of_sim = tz_now()
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= duration or (stop is not None and stop.is_set()):
                break
            due = int(elapsed * rate) + 1 - stats.sent
            for _ in range(max(due, 0)):
                if simulate_from is not None:
                    issued_at = simulate_from + (end_of_sim - simulate_from) * min(elapsed / duration, 1.0)
                else:
                    issued_at = tz_now()
                receipt = factory.next(issued_at.replace(microsecond=0))
                key = str(receipt.get("customer_id") or receipt.get("card_number"))
                await producer.send(topic, key=key.encode(), value=json.dumps(receipt).encode())
                stats.sent_at.setdefault(receipt["receipt_id"], time.monotonic())
                stats.sent += 1
            await asyncio.sleep(0.005)
        await producer.flush()
    finally:
        await producer.stop()
    return stats
