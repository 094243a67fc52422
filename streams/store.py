"""Where the customers table keeps its bytes: in memory, or on disk in RocksDB.

`LOYALTY_STORE=rocksdb` (the default) keeps every partition's values in a local
RocksDB database under the worker's data directory (Faust's `rocksdb://` store,
rocksdict driver); the worker's memory holds only the record cache of decoded states
(streams/live.py). The database survives a restart: with each commit's values it
records, in the same atomic write, the changelog offset they reach, so Faust's
recovery reads only the changelog after it. A database that was deleted is read
back from the whole changelog. `LOYALTY_STORE=memory` keeps the bytes in Faust's
in-memory store, rebuilt from the whole changelog at every start.

The live path writes through `DiskBacking`, not through Faust's `Table.__setitem__`,
which sends its own changelog record and needs a current stream event: the commit
(streams/intake.py) sends the changelog itself and stores only what was delivered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Literal, cast

import faust
from faust.types import EventT

from streams.live import Written

StoreKind = Literal["memory", "rocksdb"]

#: RocksDB's memory per partition database: Faust's defaults (a 2 GiB block cache and three
#: 64 MiB write buffers per partition) would hold more than the states themselves.
ROCKSDB_OPTIONS: Mapping[str, Any] = {
    "block_cache_size": 32 * 1024**2,
    "write_buffer_size": 16 * 1024**2,
    "max_write_buffer_number": 2,
}


class CustomersTable(faust.Table):  # type: ignore[type-arg]
    """Faust's table, telling `on_restored` which keys its changelog recovery wrote."""

    on_restored: Callable[[list[bytes]], None] | None = None

    def apply_changelog_batch(self, batch: Iterable[EventT[bytes]]) -> None:
        events = list(batch)
        super().apply_changelog_batch(events)
        if self.on_restored is not None:
            self.on_restored([event.message.key for event in events if event.message.key is not None])


class MemoryBacking:
    """Faust's in-memory store; it keeps no changelog offset."""

    def __init__(self, data: MutableMapping[bytes, bytes]) -> None:
        self._data = data

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def keys(self) -> Iterable[bytes]:
        return list(self._data.keys())

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        return [key for key in self._data if key.startswith(prefix)]

    def write(self, written: Sequence[Written], changelog_offsets: Mapping[int, int]) -> None:
        data = self._data
        for key, value, _ in written:
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value


class DiskBacking:
    """The partition databases of Faust's RocksDB store, read and written directly."""

    def __init__(self, store: Any, partition_of: Callable[[bytes], int]) -> None:
        self._store = store  # faust.stores.rocksdb.Store
        self._partition_of = partition_of
        from rocksdict import WriteBatch

        self._batch = WriteBatch

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._store._db_for_partition(self._partition_of(key)).get(key)
        return value

    def keys(self) -> Iterable[bytes]:
        """Every key of the partitions open here (those assigned), but the store's own."""
        offset_key = self._store.offset_key
        keys: list[bytes] = []
        for db in list(self._store._dbs.values()):
            keys.extend(key for key in db.keys() if key != offset_key)  # noqa: SIM118 (Rdict iterates items)
        return keys

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        """The keys that start with `prefix`, in the partition of the prefix's key (a seek, then
        the keys in order while they match)."""
        keys: list[bytes] = []
        for key in self._store._db_for_partition(self._partition_of(prefix)).keys(from_key=prefix):
            if not key.startswith(prefix):
                break
            keys.append(key)
        return keys

    def write(self, written: Sequence[Written], changelog_offsets: Mapping[int, int]) -> None:
        batches: dict[int, Any] = {}
        for key, value, partition in written:
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = self._batch(raw_mode=True)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for partition, offset in changelog_offsets.items():
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = self._batch(raw_mode=True)
            # Faust's own record of the last changelog offset the database holds: recovery reads on from there.
            batch.put(self._store.offset_key, str(offset).encode())
        for partition, batch in batches.items():
            self._store._db_for_partition(partition).write(batch)


def backing_for(
    kind: StoreKind, table: CustomersTable, partition_of: Callable[[bytes], int]
) -> MemoryBacking | DiskBacking:
    if kind == "rocksdb":
        return DiskBacking(table.data, partition_of)
    return MemoryBacking(cast(MutableMapping[bytes, bytes], table.data))
