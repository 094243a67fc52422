"""Each agent takes its partitions' records in offset order, none left out.

Faust can hand an agent a record past the next one of its partition, around a
rebalance: its fetcher delivers a batch fetched before the seek to the committed
offsets, moves its read offset past the records the seek asked for again, drops
those as already read, and fills the hole in its acknowledged offsets as if it were
a compacted topic's ("add_gap"), so the hole's offsets are committed unprocessed. The
rebalance fault test lost 748 receipts of one partition that way (the agent's record
after 1093 was 1842) and waited in vain. For the loyalty agent it is worse than a
lost input: inputs of one source partition must arrive in order, since one below the
highest taken is dropped as a copy (streams/positions.py).

So a record past the next expected offset is not taken: it is neither processed nor
acknowledged, and the partition is sought back to the expected offset. The rest of the
stale batch, still arriving, is not taken either; it needs no other seek, since Faust
no longer drops records below a read offset (streams/transport.NoReadOffsets), but one
is made every `RESEEK_EVERY` such records in case the first was lost. If after a seek the
same record comes first again, nothing lies between: a real gap (a transaction marker,
a compacted topic), which is accepted, and only then filled in the acknowledged offsets
so that commits go on past it (Faust's own filling is switched off, streams/transport.py).

`Continuity` is the bookkeeping; the agents' side (acknowledging, seeking) is in
streams/agents.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

Where = tuple[str, int]  # topic, partition
RESEEK_EVERY = 1000


class Verdict(Enum):
    TAKE = "take"
    GAP = "gap"  # taken, after a hole the broker confirmed: `Continuity.last_gap` has no records
    REWIND = "rewind"  # not taken: seek the partition back to `Continuity.expected(tp)`


@dataclass(slots=True)
class _Rewind:
    expected: int  # the offset asked for again
    trigger: int  # the first record that came instead
    refused: int = 0  # records not taken since


class Continuity:
    def __init__(self) -> None:
        self._next: dict[Where, int] = {}
        self._rewinds: dict[Where, _Rewind] = {}
        self.rewinds = 0  # records not taken and sought back over
        self.gaps_accepted = 0
        self.last_gap: tuple[int, int] = (0, -1)  # first and last offset of the last gap accepted

    def check(self, tp: Where, offset: int) -> Verdict:
        expected = self._next.get(tp)
        if expected is None or offset <= expected:
            # The first record of a partition, the next one, or one read again after a seek
            # back to the committed offset (the agents know their copies).
            self._rewinds.pop(tp, None)
            self._next[tp] = offset + 1
            return Verdict.TAKE
        rewind = self._rewinds.get(tp)
        if rewind is not None and rewind.expected == expected and rewind.refused and offset == rewind.trigger:
            # Sought back, and the broker's first record at or after `expected` is this one.
            del self._rewinds[tp]
            self._next[tp] = offset + 1
            self.gaps_accepted += 1
            self.last_gap = (expected, offset - 1)
            return Verdict.GAP
        if rewind is None or rewind.expected != expected:
            rewind = self._rewinds[tp] = _Rewind(expected, offset)
        rewind.refused += 1
        self.rewinds += 1
        return Verdict.REWIND

    def expected(self, tp: Where) -> int:
        return self._next[tp]

    def should_seek(self, tp: Where) -> bool:
        """Seek back on the first record of a rewind, and again every `RESEEK_EVERY` records if
        the expected one has still not come: the rest of the stale batch needs no other seek."""
        refused = self.refused(tp)
        return refused == 1 or refused % RESEEK_EVERY == 0

    def refused(self, tp: Where) -> int:
        """How many records the partition's current rewind has refused (0: no rewind)."""
        rewind = self._rewinds.get(tp)
        return rewind.refused if rewind is not None else 0

    def keep_only(self, kept: set[Where]) -> None:
        """After a rebalance: a partition kept is read again from its committed offset, at or
        before where we were; one newly assigned starts where another worker committed."""
        for tp in [tp for tp in self._next if tp not in kept]:
            del self._next[tp]
            self._rewinds.pop(tp, None)

    def positions(self) -> dict[Where, int]:
        """The next offset expected of each partition (for the lag gauge)."""
        return self._next
