"""The worker's decoded states, written back to the table and its changelog in batches.

This is the record cache of Kafka Streams. The `customers` table holds bytes (that
is what its changelog carries); the loyalty agent works on decoded states. `put`
only marks a key dirty; `flush`, which runs before every offset commit, encodes
each dirty value once and hands one changelog record per key to the changelog gate,
however many inputs changed the key since the last flush. Encoding a customer's
state and sending it for every receipt was the largest single cost of a receipt.

Crash-safe because of the order Faust keeps: offsets are chosen first, then the
producer is flushed (and with it this cache), then the offsets are committed. An
input whose offset was committed therefore has its state in the changelog; after a
crash the inputs after the last commit are read again, from the states the
changelog has, and the receipt ids a state remembers make those inputs whose state
did reach the changelog resends.

Keys are written in the order of their last change, except the partition's own
bookkeeping (`last`: its close frontier and its source positions), which is written
after every other key of the flush. A partition's changelog keeps that order, so if
a bookkeeping record landed, every state written before it in the flush landed too.
Order of last change alone was not enough: a customer changed before the frontier
moved and again after it is written after the frontier, and a crash that let the
frontier land but not the customer made the restarted worker read that customer's
earlier receipts again past a frontier already moved, closing its month before
them (the crash storm: a 31 October receipt counted into a closed October).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Protocol, TypeVar


class Encodable(Protocol):
    def to_bytes(self) -> bytes: ...


V = TypeVar("V", bound=Encodable)
Write = Callable[[bytes, bytes | None, int], None]  # key, value (None: a tombstone), partition


class LiveStates:
    """Decoded values of the table's keys; the ones changed since the last flush are dirty.

    An entry is trusted only while the table still holds the very bytes object it
    came from (or was last stored as): table recovery after a rebalance stores new
    objects, so a value restored from the changelog is always decoded afresh, and a
    dirty value whose key was restored meanwhile is dropped, not written over it.
    """

    def __init__(
        self,
        data: MutableMapping[bytes, bytes],
        write: Write,
        capacity: int = 200_000,
        last: Callable[[bytes], bool] = lambda key: False,
    ) -> None:
        self._data = data
        self._write = write
        self._last = last  # keys written after all others in a flush
        self._capacity = capacity
        self._entries: dict[bytes, tuple[bytes | None, Encodable | None]] = {}
        self._dirty: dict[bytes, int] = {}  # key -> partition, in the order of their last change

    def get(self, key: bytes, decode: Callable[[bytes], V]) -> V | None:
        stored = self._data.get(key)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is stored:
            return entry[1]  # type: ignore[return-value]
        if stored is None:
            return None
        value = decode(stored)
        self._remember(key, stored, value)
        return value

    def peek(self, key: bytes) -> Encodable | bytes | None:
        """The decoded value if there is a trusted one, else the stored bytes, without decoding them."""
        stored = self._data.get(key)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is stored:
            return entry[1]
        return stored

    def put(self, key: bytes, value: Encodable, partition: int) -> None:
        self._remember(key, self._data.get(key), value)
        self._dirty.pop(key, None)
        self._dirty[key] = partition

    def delete(self, key: bytes, partition: int) -> None:
        self._remember(key, self._data.get(key), None)
        self._dirty.pop(key, None)
        self._dirty[key] = partition

    @property
    def dirty(self) -> int:
        return len(self._dirty)

    def all_keys(self) -> list[bytes]:
        """Every key with a value: the table's, and those put since the last flush (deleted ones
        may be among them; `get` answers None for those)."""
        return [*self._data.keys(), *(k for k in self._dirty if k not in self._data)]

    def flush(self) -> int:
        """Stores every dirty value in the table and writes its changelog record; returns how many.

        A value whose key the table restored meanwhile is dropped (the restored one is what
        the changelog says). Nothing else is: a flush runs before every offset commit and in
        a rebalance before the partitions are handed over, and Faust may commit offsets it
        chose before the assignment changed, so a state left out here could be an input
        committed and lost. (The first version dropped the states of partitions the worker
        no longer owned; in the crash storm a receipt was then counted once, forgotten, and
        counted again when its copy came back.)
        """
        written = 0
        data, entries, last = self._data, self._entries, self._last
        states: list[tuple[bytes, int]] = []
        bookkeeping: list[tuple[bytes, int]] = []
        for item in self._dirty.items():
            (bookkeeping if last(item[0]) else states).append(item)
        for key, partition in states + bookkeeping:
            base, value = entries[key]
            if data.get(key) is not base:
                entries.pop(key, None)
                continue
            if value is None:
                data.pop(key, None)
                entries.pop(key, None)
                self._write(key, None, partition)
            else:
                encoded = value.to_bytes()
                data[key] = encoded
                entries[key] = (encoded, value)
                self._write(key, encoded, partition)
            written += 1
        self._dirty.clear()
        return written

    def _remember(self, key: bytes, stored: bytes | None, value: Encodable | None) -> None:
        if len(self._entries) >= self._capacity and key not in self._entries:
            # Only a cache of decoded values, but for the dirty ones: those stay.
            self._entries = {k: self._entries[k] for k in self._dirty}
        self._entries[key] = (stored, value)
