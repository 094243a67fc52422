"""The worker's decoded states over the customers table: Kafka Streams' record cache.

The `customers` table holds bytes (what its changelog carries), in memory or on disk
(streams/store.py); the partition processor works on decoded states. `put` only marks
a key dirty. A commit (streams/intake.py) takes a `snapshot`: each dirty value encoded
once, however many inputs changed it since the last one, the partitions' bookkeeping
(close frontier, source positions) after every other key. Once the events made before
the snapshot are delivered, the commit writes the snapshot to the changelog and, once
that is delivered, `store`s it in the table, then commits the offsets of the inputs
it covers. So a state in the changelog never runs ahead of its events, the table never
runs ahead of the changelog, and an input whose offset is committed has its state in
the changelog.

A decoded entry is trusted until the table's recovery writes its key (`restored`):
what the changelog says then is decoded afresh, and a dirty value whose key was
restored meanwhile is dropped, not written over it. Clean entries are forgotten when
the cache is full, or when their partition is revoked (`drop_partitions`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar


class Encodable(Protocol):
    def to_bytes(self) -> bytes: ...


V = TypeVar("V", bound=Encodable)
#: A value of a snapshot: its key, its encoding (None: deleted) and its table partition.
Written = tuple[bytes, bytes | None, int]
_ABSENT = object()


class Backing(Protocol):
    """The table's stored bytes (streams/store.py)."""

    def get(self, key: bytes) -> bytes | None: ...

    def keys(self) -> Iterable[bytes]: ...

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]: ...

    def write(self, written: Sequence[Written], changelog_offsets: Mapping[int, int]) -> None:
        """Stores a snapshot's values; a disk store records with them, atomically, the changelog
        offset (per table partition) up to which it now holds what the changelog says."""


class LiveStates:
    def __init__(
        self,
        backing: Backing,
        capacity: int = 200_000,
        last: Callable[[bytes], bool] = lambda key: False,
        partition_of: Callable[[bytes], int] = lambda key: 0,
    ) -> None:
        self._backing = backing
        self._last = last  # keys written after all others in a snapshot
        self._partition_of = partition_of
        self._capacity = capacity
        self._entries: dict[bytes, Encodable | None] = {}  # None: deleted, not stored yet
        self._dirty: dict[bytes, int] = {}  # key -> partition, in the order of their last change
        self._pending: set[bytes] = set()  # keys of a snapshot not stored yet
        self._restored: set[bytes] = set()  # keys of the pending snapshot that recovery wrote since

    def get(self, key: bytes, decode: Callable[[bytes], V]) -> V | None:
        entry = self._entries.get(key, _ABSENT)
        if entry is not _ABSENT:
            return entry  # type: ignore[return-value]
        stored = self._backing.get(key)
        if stored is None:
            return None
        value = decode(stored)
        self._remember(key, value)
        return value

    def peek(self, key: bytes) -> Encodable | bytes | None:
        """The decoded value if there is one, else the stored bytes, without decoding them."""
        entry = self._entries.get(key, _ABSENT)
        if entry is not _ABSENT:
            return entry  # type: ignore[return-value]
        return self._backing.get(key)

    def put(self, key: bytes, value: Encodable, partition: int) -> None:
        self._remember(key, value)
        self._dirty.pop(key, None)
        self._dirty[key] = partition

    def delete(self, key: bytes, partition: int) -> None:
        self._remember(key, None)
        self._dirty.pop(key, None)
        self._dirty[key] = partition

    @property
    def dirty(self) -> int:
        return len(self._dirty)

    @property
    def cached(self) -> int:
        return len(self._entries)

    def stored_keys(self) -> list[bytes]:
        """Every key with a value: the table's, and those put since the last snapshot was stored
        (deleted ones may be among them; `get` answers None for those)."""
        stored = list(self._backing.keys())
        known = set(stored)
        return stored + [k for k, v in self._entries.items() if v is not None and k not in known]

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        """The keys with a value that start with `prefix`, put since the last snapshot included."""
        stored = self._backing.keys_with_prefix(prefix)
        known = set(stored)
        new = [k for k, v in self._entries.items() if v is not None and k.startswith(prefix) and k not in known]
        return [k for k in stored if self._entries.get(k, True) is not None] + new

    def snapshot(self) -> list[Written]:
        """Every dirty value, encoded, in the order of their last change but the bookkeeping keys
        (`last`) after all others; the dirty set is cleared. Nothing is stored yet (`store`)."""
        entries, last = self._entries, self._last
        states: list[Written] = []
        bookkeeping: list[Written] = []
        for key, partition in self._dirty.items():
            value = entries[key]
            (bookkeeping if last(key) else states).append(
                (key, value.to_bytes() if value is not None else None, partition)
            )
        self._pending.update(self._dirty)
        self._dirty.clear()
        return states + bookkeeping

    def unrestored(self, written: Iterable[Written]) -> list[Written]:
        """A snapshot's values but those whose key the table restored since the snapshot (the
        restored one is what the changelog says): what goes to the changelog."""
        restored = self._restored
        return [w for w in written if w[0] not in restored]

    def store(self, written: Sequence[Written], changelog_offsets: Mapping[int, int]) -> list[Written]:
        """Puts a snapshot's values (delivered to the changelog up to `changelog_offsets`) in the
        table; returns those stored (a key restored meanwhile keeps what was restored, and its
        partition's offset is not recorded: the table may hold less than the changelog says)."""
        restored = self._restored
        stored = [w for w in written if w[0] not in restored]
        skipped = {partition for key, _, partition in written if key in restored}
        self._backing.write(stored, {p: o for p, o in changelog_offsets.items() if p not in skipped})
        self._pending.clear()
        self._restored.clear()
        return stored

    def restored(self, keys: Iterable[bytes]) -> None:
        """The table's recovery wrote these keys: what is cached or dirty of them is stale."""
        entries, dirty, pending = self._entries, self._dirty, self._pending
        for key in keys:
            entries.pop(key, None)
            dirty.pop(key, None)
            if key in pending:
                self._restored.add(key)

    def forget(self, keys: Iterable[bytes]) -> None:
        """Drops what was put for these keys since their value was last stored: they read as the
        table holds them again."""
        for key in keys:
            self._entries.pop(key, None)
            self._dirty.pop(key, None)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forgets the clean entries of partitions this worker no longer serves."""
        gone, keep, partition_of = set(partitions), self._dirty.keys() | self._pending, self._partition_of
        self._entries = {k: v for k, v in self._entries.items() if k in keep or partition_of(k) not in gone}

    def dirty_keys(self, partition: int) -> list[bytes]:
        return [key for key, p in self._dirty.items() if p == partition]

    def _remember(self, key: bytes, value: Encodable | None) -> None:
        entries = self._entries
        if len(entries) >= self._capacity and key not in entries:
            # Only a cache of decoded values, but for the dirty ones and those not stored yet:
            # the older half of the clean ones goes (in the order they were first cached).
            keep, excess = self._dirty.keys() | self._pending, len(entries) - self._capacity // 2
            gone = []
            for k in entries:
                if excess <= 0:
                    break
                if k not in keep:
                    gone.append(k)
                    excess -= 1
            for k in gone:
                del entries[k]
        entries[key] = value
