"""A partition's close frontier: which periods are over for every customer of the partition.

The contract's time rule: a period closes for everyone when the partition's
watermark (the latest `issued_at` seen, minus `period_close_grace`) passes its
end, or, for a partition idle for `idle_close_after`, when the wall clock does.
The frontier is, per status system, the first period that is still open; every
customer whose open period is before it is due to be closed (`engine.close_due`).

Only the frontier is stored (in the customers table, under `partition:{n}`),
not the watermark: the frontier moves exactly when an input whose time is past
the next threshold is processed, so re-processing the inputs after a crash moves
it at the same input again, whatever the watermark was before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import orjson

from models.inputs import PARTITION_KEY_PREFIX
from models.periods import PeriodKind, parse_period, period_containing
from models.schema import LoyaltyConfig


def partition_key(partition: int) -> str:
    return f"{PARTITION_KEY_PREFIX}{partition}"


@dataclass(slots=True)
class CloseFrontier:
    periods: dict[str, str] = field(default_factory=dict)  # status system -> its first period still open
    cause: str = ""  # the input that moved it here: the `caused_by` of the closes it makes
    walked: bool = True  # every customer of the partition has been brought up to `periods`

    def to_bytes(self) -> bytes:
        return orjson.dumps({"periods": self.periods, "cause": self.cause, "walked": self.walked})

    @classmethod
    def from_bytes(cls, raw: bytes) -> CloseFrontier:
        data = orjson.loads(raw)
        return cls(dict(data["periods"]), str(data["cause"]), bool(data["walked"]))


def clock_cause(instant: str) -> str:
    """The `caused_by` of closes the wall clock made for an idle partition."""
    return f"clock:{instant}"


def frontier_at(instant: datetime, config: LoyaltyConfig) -> dict[str, str]:
    """Per system, the period containing `instant - grace`: every earlier one has ended more than the grace ago."""
    edge = instant - config.period_close_grace
    return {s.id: period_containing(edge, PeriodKind(s.period), config.timezone).id for s in config.status_systems}


def next_threshold(frontier: CloseFrontier, config: LoyaltyConfig) -> float:
    """The instant (epoch seconds) from which an input moves the frontier on: the earliest open period's end + grace."""
    ends = [
        parse_period(PeriodKind(s.period), frontier.periods[s.id]).ends_at(config.timezone)
        for s in config.status_systems
        if s.id in frontier.periods
    ]
    if len(ends) < len(config.status_systems):
        return float("-inf")  # a system without a frontier yet (new in the config): any input sets it
    return (min(ends) + config.period_close_grace).timestamp()


def advanced(
    frontier: CloseFrontier | None, instant: datetime, cause: str, config: LoyaltyConfig
) -> CloseFrontier | None:
    """The frontier after the input `cause` at `instant`, or None when it does not move.

    The first receipt a partition sees sets the frontier; customers that customer
    events or commands created before it are walked like after any other move.
    """
    periods = frontier_at(instant, config)
    if frontier is None:
        return CloseFrontier(periods, cause, walked=False)
    moved = {
        system_id: period_id
        for system_id, period_id in periods.items()
        if system_id not in frontier.periods or _later(config, system_id, period_id, frontier.periods[system_id])
    }
    if not moved:
        return None
    return CloseFrontier({**frontier.periods, **moved}, cause, walked=False)


def _later(config: LoyaltyConfig, system_id: str, candidate: str, current: str) -> bool:
    kind = PeriodKind(config.system(system_id).period)
    return parse_period(kind, candidate) > parse_period(kind, current)
