"""What a replay under a configuration comes to, and how two configurations' outcomes differ."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from models.events import OfferTrigger, Output, StatusChange
from models.history import Replayer
from models.messages import closed_counter_value, counter_value
from models.schema import LoyaltyConfig
from models.state import OUTSIDE_PROGRAMME


@dataclass
class Outcome:
    """One configuration's result over the history: levels at the end, and what was granted."""

    levels: dict[str, dict[str, str]] = field(default_factory=dict)  # system -> customer -> level at the end
    deciding: dict[str, dict[str, str]] = field(default_factory=dict)  # system -> customer -> last closed counter
    offers: Counter[str] = field(default_factory=Counter)  # offer id -> times granted
    points: Counter[str] = field(default_factory=Counter)  # offer id -> bonus points granted
    changes: Counter[str] = field(default_factory=Counter)  # "system direction reason" -> status changes
    inputs: int = 0
    refused: int = 0
    seconds: float = 0.0


_COUNTED = (OfferTrigger, StatusChange)  # a tuple: a union in isinstance is built on every call


@dataclass
class Tally:
    """What a replay's events grant, counted as they come: a month's events are never held at once."""

    result: Outcome = field(default_factory=Outcome)
    #: The causes counted: one cause, one event id. Offers' and status changes' causes start
    #: with their kind ("offer|…", "status|…"), so one set holds both.
    _seen: set[str] = field(default_factory=set)

    def add(self, outputs: list[Output]) -> None:
        """Counts from what the events carry: no value is made."""
        result = self.result
        for output in outputs:
            if not isinstance(output, _COUNTED):
                continue  # receipt messages and snapshots
            if output.cause in self._seen:
                continue  # a resent receipt's events again: the same events, granted once
            self._seen.add(output.cause)
            if isinstance(output, OfferTrigger):
                result.offers[output.offer_id] += 1
                result.points[output.offer_id] += output.points or 0
            else:
                result.changes[f"{output.status_system} {output.direction} {output.reason}"] += 1

    def outcome(self, replayer: Replayer, config: LoyaltyConfig) -> Outcome:
        """The tally with the customers' levels at the end."""
        result = self.result
        result.inputs, result.refused = replayer.inputs, replayer.refused
        for system in config.status_systems:
            levels, deciding = result.levels.setdefault(system.id, {}), result.deciding.setdefault(system.id, {})
            for customer_id, state in replayer.states.items():
                sys_state = state.systems.get(system.id)
                if sys_state is None or state.client_state in OUTSIDE_PROGRAMME:
                    continue
                levels[customer_id] = sys_state.level
                closed = (
                    closed_counter_value(system, sys_state)
                    if sys_state.closed_period
                    else counter_value(system, sys_state)
                )
                deciding[customer_id] = str(closed)
        return result


@dataclass
class SystemComparison:
    system_id: str
    levels: list[str]  # every level either configuration has, lowest first as the new one orders them
    current: Counter[str]  # level -> customers, under the current configuration
    new: Counter[str]
    matrix: dict[tuple[str, str], int]  # (current level, new level) -> customers
    differing: list[tuple[str, str, str, str]]  # customer, current level, new level, deciding counter


def compare(
    current: Outcome, new: Outcome, current_config: LoyaltyConfig, new_config: LoyaltyConfig
) -> list[SystemComparison]:
    comparisons = []
    for system in new_config.status_systems:
        ours = current.levels.get(system.id, {})
        theirs = new.levels.get(system.id, {})
        ordered = [level.id for level in system.levels]
        if system.id in {s.id for s in current_config.status_systems}:
            old = current_config.system(system.id)
            ordered += [level.id for level in old.levels if level.id not in ordered]
        matrix: Counter[tuple[str, str]] = Counter()
        differing = []
        for customer_id in sorted(ours.keys() | theirs.keys()):
            before, after = ours.get(customer_id, "-"), theirs.get(customer_id, "-")
            matrix[(before, after)] += 1
            if before != after:
                counter = new.deciding.get(system.id, {}).get(customer_id, "")
                differing.append((customer_id, before, after, counter))
        comparisons.append(
            SystemComparison(
                system.id,
                ordered,
                Counter(ours.values()),
                Counter(theirs.values()),
                dict(matrix),
                differing,
            )
        )
    return comparisons
