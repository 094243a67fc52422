"""`loyalty what-if`: the input history replayed under the current and a new configuration.

The two replays run side by side in two processes (the core is pure Python, one
core each); the history is read once, before they fork, and inherited
(streams/shards.forked, which `loyalty replay`'s shards run in too).
"""

from __future__ import annotations

import csv
import functools
import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from models.history import HistoryRecord, Replayer, packed
from models.schema import LoyaltyConfig
from models.whatif import Outcome, SystemComparison, Tally, compare
from streams.envelope import partition_for
from streams.history.reading import replaying
from streams.history.shards import forked


def as_what_if(config: LoyaltyConfig) -> LoyaltyConfig:
    """The configuration as a what-if runs it: without receipt-message templates. Receipt lines
    change no counter, level or offer, and rendering them is a large share of a replay."""
    return config.model_copy(update={"receipt_messages": ()})


def replay_outcome(
    config: LoyaltyConfig,
    records: Sequence[HistoryRecord],
    partitioner: Callable[[str], int],
    partitions: int,
    until: datetime | None,
) -> Outcome:
    """Replays `records` under `config` and closes every period that ended by `until`."""
    started = time.process_time()
    config = as_what_if(config)
    replayer, tally = Replayer(config, partitioner, partitions), Tally()
    with replaying():
        for record in records:
            tally.add(replayer.feed(record))
        if until is not None:
            tally.add(replayer.finish(until + config.period_close_grace))
    result = tally.outcome(replayer, config)
    result.seconds = time.process_time() - started
    return result


def side_by_side(
    current: LoyaltyConfig,
    new: LoyaltyConfig,
    records: Sequence[HistoryRecord],
    partitions: int,
    until: datetime | None,
) -> tuple[Outcome, Outcome]:
    def partitioner(key: str) -> int:
        return partition_for(key, partitions)

    history = packed(records)  # the children read it without copying its pages (models/history.PackedRecords)
    replays = [functools.partial(replay_outcome, c, history, partitioner, partitions, until) for c in (current, new)]
    ours, theirs = forked(replays)
    return ours, theirs


def report(
    current: Outcome,
    new: Outcome,
    comparisons: list[SystemComparison],
    out: Path,
    console: Console,
) -> dict[str, Path]:
    """Prints the tables and writes the JSON figures, the CSV of customers whose level differs, and the chart."""
    out.mkdir(parents=True, exist_ok=True)
    for comparison in comparisons:
        levels = Table(title=f"{comparison.system_id}: customers per level at the end")
        levels.add_column("level")
        levels.add_column("current", justify="right")
        levels.add_column("new", justify="right")
        levels.add_column("change", justify="right")
        for level in comparison.levels:
            a, b = comparison.current.get(level, 0), comparison.new.get(level, 0)
            levels.add_row(level, str(a), str(b), f"{b - a:+d}")
        console.print(levels)
        matrix = Table(title=f"{comparison.system_id}: current level (rows) → new level (columns)")
        matrix.add_column("")
        for level in comparison.levels:
            matrix.add_column(level, justify="right")
        for before in comparison.levels:
            matrix.add_row(before, *(str(comparison.matrix.get((before, after), 0)) for after in comparison.levels))
        console.print(matrix)
    offers = Table(title="offers granted over the history")
    for column in ("offer", "current", "new", "points current", "points new"):
        offers.add_column(column, justify="right" if column != "offer" else "left")
    for offer_id in sorted(current.offers.keys() | new.offers.keys()):
        offers.add_row(
            offer_id,
            str(current.offers[offer_id]),
            str(new.offers[offer_id]),
            str(current.points[offer_id]),
            str(new.points[offer_id]),
        )
    offers.add_row(
        "total",
        str(sum(current.offers.values())),
        str(sum(new.offers.values())),
        str(sum(current.points.values())),
        str(sum(new.points.values())),
    )
    console.print(offers)
    differing = sum(len(c.differing) for c in comparisons)
    console.print(
        f"{current.inputs} inputs replayed ({current.refused} refused as the worker would), "
        f"{differing} customer levels differ; replay CPU: current {current.seconds:.1f} s, new {new.seconds:.1f} s"
    )
    paths = {"json": out / "what-if.json", "csv": out / "what-if-differences.csv", "png": out / "what-if.png"}
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customer_id", "status_system", "current_level", "new_level", "new_deciding_counter"])
        for comparison in comparisons:
            for customer_id, before, after, counter in comparison.differing:
                writer.writerow([customer_id, comparison.system_id, before, after, counter])
    figures = {
        "current": _totals(current),
        "new": _totals(new),
        "systems": [
            {
                "status_system": c.system_id,
                "levels": c.levels,
                "current": dict(c.current),
                "new": dict(c.new),
                "matrix": [[before, after, count] for (before, after), count in sorted(c.matrix.items())],
                "differing": len(c.differing),
            }
            for c in comparisons
        ],
    }
    paths["json"].write_text(json.dumps(figures, indent=2), encoding="utf-8")
    chart(comparisons, paths["png"])
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")
    return paths


def _totals(result: Outcome) -> dict[str, object]:
    return {
        "offers": dict(result.offers),
        "points": dict(result.points),
        "status_changes": dict(result.changes),
        "inputs": result.inputs,
        "refused": result.refused,
        "cpu_seconds": round(result.seconds, 3),
    }


def chart(comparisons: list[SystemComparison], path: Path) -> None:
    """Per status system: customers per level under each configuration, and the transition heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(comparisons), 2, figsize=(11, 4.2 * len(comparisons)), squeeze=False)
    for row, comparison in enumerate(comparisons):
        bars, heat = axes[row]
        xs = range(len(comparison.levels))
        bars.bar(
            [x - 0.2 for x in xs], [comparison.current.get(lv, 0) for lv in comparison.levels], 0.4, label="current"
        )
        bars.bar([x + 0.2 for x in xs], [comparison.new.get(lv, 0) for lv in comparison.levels], 0.4, label="new")
        bars.set_xticks(list(xs), comparison.levels)
        bars.set_ylabel("customers")
        bars.set_title(f"{comparison.system_id}: customers per level")
        bars.legend()
        grid = [[comparison.matrix.get((a, b), 0) for b in comparison.levels] for a in comparison.levels]
        heat.imshow(grid, cmap="Blues")
        heat.set_xticks(list(xs), comparison.levels)
        heat.set_yticks(list(xs), comparison.levels)
        heat.set_xlabel("new configuration")
        heat.set_ylabel("current configuration")
        heat.set_title(f"{comparison.system_id}: level transitions")
        top = max((max(r) for r in grid), default=0)
        for i, values in enumerate(grid):
            for j, value in enumerate(values):
                heat.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_what_if(
    current: LoyaltyConfig,
    new: LoyaltyConfig,
    records: list[HistoryRecord],
    partitions: int,
    until: datetime | None,
    out: Path,
    console: Console,
) -> dict[str, Path]:
    ours, theirs = side_by_side(current, new, records, partitions, until)
    return report(ours, theirs, compare(ours, theirs, current, new), out, console)
