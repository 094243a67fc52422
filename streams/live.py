"""The worker's decoded states over the customers table: Kafka Streams' record cache.

The `customers` table holds bytes (what its changelog carries); the partition
processor works on decoded states. `put` only marks a key dirty. A commit
(streams/commits.py) takes a `snapshot`: each dirty value encoded once, however many
inputs changed it since the last one, the partitions' bookkeeping (close frontier,
source positions) after every other key. Once the events made before the snapshot
are delivered, the commit `store`s the snapshot in the table and writes it to the
changelog, then commits the offsets of the inputs it covers. So a state in the
changelog never runs ahead of its events, and an input whose offset is committed
has its state in the changelog.

An entry is trusted only while the table still holds the very bytes object it came
from (or was last stored as): table recovery after a rebalance stores new objects,
so a value restored from the changelog is always decoded afresh, and a dirty value
whose key was restored meanwhile is dropped, not written over it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from typing import Protocol, TypeVar


class Encodable(Protocol):
    def to_bytes(self) -> bytes: ...


V = TypeVar("V", bound=Encodable)
#: A value of a snapshot: its key, its encoding (None: deleted) and its table partition.
Written = tuple[bytes, bytes | None, int]


class LiveStates:
    def __init__(
        self,
        data: MutableMapping[bytes, bytes],
        capacity: int = 200_000,
        last: Callable[[bytes], bool] = lambda key: False,
    ) -> None:
        self._data = data
        self._last = last  # keys written after all others in a snapshot
        self._capacity = capacity
        self._entries: dict[bytes, tuple[bytes | None, Encodable | None]] = {}
        self._dirty: dict[bytes, int] = {}  # key -> partition, in the order of their last change
        self._pending: set[bytes] = set()  # keys of a snapshot not stored yet

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

    def stored_keys(self) -> list[bytes]:
        """Every key with a value: the table's, and those put since the last snapshot was stored
        (deleted ones may be among them; `get` answers None for those)."""
        return [*self._data.keys(), *(k for k in self._entries if k not in self._data and self._entries[k][1])]

    def snapshot(self) -> list[Written]:
        """Every dirty value, encoded, in the order of their last change but the bookkeeping keys
        (`last`) after all others; the dirty set is cleared. Nothing is stored yet (`store`).

        A value whose key the table restored meanwhile is left out (the restored one is what
        the changelog says). Nothing else is: a state left out could be an input committed
        and lost."""
        data, entries, last = self._data, self._entries, self._last
        states: list[Written] = []
        bookkeeping: list[Written] = []
        for key, partition in self._dirty.items():
            base, value = entries[key]
            if data.get(key) is not base:
                entries.pop(key, None)
                continue
            (bookkeeping if last(key) else states).append(
                (key, value.to_bytes() if value is not None else None, partition)
            )
        self._pending.update(self._dirty)
        self._dirty.clear()
        return states + bookkeeping

    def store(self, written: Iterable[Written]) -> list[Written]:
        """Puts a snapshot's values in the table; returns those stored (a key the table restored
        since the snapshot keeps what was restored)."""
        data, entries = self._data, self._entries
        stored: list[Written] = []
        for key, encoded, partition in written:
            entry = entries.get(key)
            before = data.get(key)
            if entry is not None and entry[0] is not before:
                continue  # restored meanwhile
            if encoded is None:
                data.pop(key, None)
            else:
                data[key] = encoded
            if entry is not None:
                # Still the decoded value (changed again since the snapshot, it stays dirty).
                entries[key] = (data.get(key), entry[1])
            stored.append((key, encoded, partition))
        self._pending.clear()
        return stored

    def forget(self, keys: Iterable[bytes]) -> None:
        """Drops what was put for these keys since their value was last stored: they read as the
        table holds them again."""
        for key in keys:
            self._entries.pop(key, None)
            self._dirty.pop(key, None)

    def dirty_keys(self, partition: int) -> list[bytes]:
        return [key for key, p in self._dirty.items() if p == partition]

    def _remember(self, key: bytes, stored: bytes | None, value: Encodable | None) -> None:
        if len(self._entries) >= self._capacity and key not in self._entries:
            # Only a cache of decoded values, but for the dirty ones and those not stored yet.
            keep = self._dirty.keys() | self._pending
            self._entries = {k: self._entries[k] for k in keep if k in self._entries}
        self._entries[key] = (stored, value)
