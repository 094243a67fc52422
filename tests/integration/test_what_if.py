"""`loyalty what-if` over a history on a real broker, against figures the test works out itself."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from config.loading import DEFAULT_CONFIG, parse_config
from tests.conftest import PipelineUnderTest
from tests.integration.test_pipeline import receipt, send

pytestmark = pytest.mark.integration

NEW_RULES = {"above: 100, privileges: {discount_percent: 5": "above: 120, privileges: {discount_percent: 5"} | {
    "above: 200, privileges": "above: 250, privileges"
}


def level_for(amount: Decimal, silver: int, gold: int) -> str:
    """The contract's rule, written out: strictly above a threshold earns the level."""
    return "gold" if amount > gold else "silver" if amount > silver else "bronze"


def october_history(customers: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Decimal]]:
    """Sales in October 2026 (with POS resends), and each customer's October total counted once."""
    rng = random.Random(seed)
    sales, totals = [], {}
    for n in range(customers):
        customer = f"C-W{n:04d}"
        totals[customer] = Decimal(0)
        for k in range(rng.randrange(1, 6)):
            total = Decimal(rng.randrange(500, 9000)) / 100
            day = rng.randrange(1, 31)
            at = f"2026-10-{day:02d}T{rng.randrange(9, 20):02d}:00:00+02:00"
            sale = receipt(f"W-{n}-{k}", customer, at, str(total))
            sales.append(sale)
            totals[customer] += total
            if rng.random() < 0.1:
                sales.append(sale)  # the till did not see the acknowledgement and sent it again
    # Kafka's order is the order sent; a month is sent in time order as tills would.
    sales.sort(key=lambda s: s["issued_at"])
    return sales, totals


def run_cli(pipeline: PipelineUnderTest, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=pipeline.env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


async def test_what_if_counts_levels_and_transitions_as_worked_out_independently(
    pipeline: PipelineUnderTest, tmp_path: Path
) -> None:
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    for old, new in NEW_RULES.items():
        assert old in text
        text = text.replace(old, new)
    parse_config(text)
    new_config = tmp_path / "gold-from-250.yaml"
    new_config.write_text(text, encoding="utf-8")
    sales, totals = october_history(400, seed=5)
    await send(pipeline, sales)

    out = tmp_path / "report"
    done = run_cli(pipeline, "what-if", "--config", str(new_config), "--from", "2026-10-01", "--to", "2026-11-01",
                   "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout

    # November's levels are what October's totals earn (recompute), under each threshold pair.
    current = {c: level_for(t, 100, 200) for c, t in totals.items()}
    new = {c: level_for(t, 120, 250) for c, t in totals.items()}
    figures = json.loads((out / "what-if.json").read_text())
    (amount,) = [s for s in figures["systems"] if s["status_system"] == "monthly_amount"]
    assert amount["current"] == dict(Counter(current.values()))
    assert amount["new"] == dict(Counter(new.values()))
    expected_matrix = Counter((current[c], new[c]) for c in totals)
    assert {(a, b): n for a, b, n in amount["matrix"]} == dict(expected_matrix)
    assert expected_matrix[("gold", "silver")] > 0 and expected_matrix[("silver", "bronze")] > 0  # the case is real

    # The purchase-count system has the same rules in both: nobody moves there.
    (count,) = [s for s in figures["systems"] if s["status_system"] == "monthly_count"]
    assert count["differing"] == 0 and count["current"] == count["new"]

    with (out / "what-if-differences.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["customer_id"], r["current_level"], r["new_level"]) for r in rows} == {
        (c, current[c], new[c]) for c in totals if current[c] != new[c]
    }
    assert all(Decimal(r["new_deciding_counter"]) == totals[r["customer_id"]] for r in rows)
    # Each counted sale, resends counted once; the status discount offer fires on each.
    counted = len({s["receipt_id"] for s in sales})
    assert figures["current"]["offers"]["amount_status_discount"] == counted
    assert (out / "what-if.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "current level (rows)" in done.stdout


def test_a_configuration_that_fails_validation_is_refused_before_any_work(
    pipeline: PipelineUnderTest, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT_CONFIG.read_text(encoding="utf-8").replace("above: 200", "above: 50"), encoding="utf-8")
    env_broker = "127.0.0.1:9"  # nothing listens: reading history would fail differently, and slowly
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "what-if", "--config", str(bad), "--out", str(tmp_path / "x")],
        env={**pipeline.env(), "KAFKA_BOOTSTRAP": env_broker},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "status_systems[0].levels[2].above: must be greater than 100" in done.stderr
    assert not (tmp_path / "x").exists()
