"""Python's cyclic collector, kept to what the worker made since its last commit.

Reference counting frees nearly everything the live path makes; the collector is only
there for reference cycles, and the live path makes none (tests/unit/test_collector.py).
Left alone, the collector walks every object that outlives a batch (the record cache's
states, their remembered receipts) again at each collection of an older generation,
and everything a batch holds while it runs at each collection of the youngest. So:

- what starting made, and what each commit leaves alive, is frozen (`gc.freeze`, a
  list splice): later collections walk only what was made since the last commit;
- the youngest generation is collected every `threshold` allocations, not Python's 700;
- every `full_every` seconds the frozen objects go back to the collector and one full
  collection runs, so that a cycle made elsewhere (Faust, aiokafka, asyncio) while it
  was alive is freed within that time rather than kept for good. A full collection walks
  everything the worker holds, as Python's own full collections already did whenever
  the oldest generation had grown by a quarter.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

#: Allocations between two collections of the youngest generation (Python's default: 700).
GC_THRESHOLD = 20_000
#: Seconds between two full collections of everything, the frozen objects included.
FULL_EVERY = 600.0


class Collector:
    def __init__(
        self,
        threshold: int = GC_THRESHOLD,
        full_every: float = FULL_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold, self.full_every, self._clock = threshold, full_every, clock
        self._full_at = 0.0
        self.full_collections = 0

    def start(self) -> None:
        """What starting made (modules, the configuration, the framework) leaves the walks."""
        gc.freeze()
        gc.set_threshold(self.threshold, *gc.get_threshold()[1:])
        self._full_at = self._clock() + self.full_every

    def committed(self) -> None:
        """After a commit: what is alive now leaves the walks (once in `full_every`, after a
        full collection of everything)."""
        if self._clock() >= self._full_at:
            gc.unfreeze()
            gc.collect()
            self.full_collections += 1
            self._full_at = self._clock() + self.full_every
        gc.freeze()
