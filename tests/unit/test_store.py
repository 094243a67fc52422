"""The disk backing writes a snapshot and its changelog offset in one atomic write per partition."""

from __future__ import annotations

from pathlib import Path

from rocksdict import Options, Rdict

from models.inputs import receipt_key
from streams.intake import table_partition
from streams.store import DiskBacking


class PartitionDatabases:
    """What DiskBacking needs of Faust's RocksDB store: a database per partition."""

    offset_key = b"__faust\0offset__"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dbs: dict[int, Rdict] = {}

    def _db_for_partition(self, partition: int) -> Rdict:
        if partition not in self._dbs:
            self._dbs[partition] = Rdict(str(self.path / f"p{partition}"), options=Options(raw_mode=True))
        return self._dbs[partition]

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()


def test_values_and_the_changelog_offset_are_stored_and_survive_a_reopen(tmp_path: Path) -> None:
    store = PartitionDatabases(tmp_path)
    backing = DiskBacking(store, lambda key: table_partition(key, 4))
    c1 = table_partition(b"C-1", 4)
    backing.write([(b"C-1", b"state", c1), (b"partition:2", b"frontier", 2)], {c1: 41, 2: 7})
    backing.write([(b"card:7", b"owner", table_partition(b"card:7", 4))], {})
    assert backing.get(b"C-1") == b"state"
    assert backing.get(b"partition:2") == b"frontier"  # a partition's own key, in its partition
    store.close()
    backing = DiskBacking(store, lambda key: table_partition(key, 4))
    assert backing.get(b"C-1") == b"state"
    assert store._db_for_partition(c1).get(store.offset_key) == b"41"
    assert store._db_for_partition(2).get(store.offset_key) == b"7"
    for partition in range(4):  # Faust opens the partitions assigned
        store._db_for_partition(partition)
    assert sorted(backing.keys()) == [b"C-1", b"card:7", b"partition:2"]  # not the store's own key
    backing.write([(b"C-1", None, c1)], {c1: 42})
    assert backing.get(b"C-1") is None
    store.close()


def test_a_customer_s_stored_receipts_are_found_by_prefix_on_its_partition(tmp_path: Path) -> None:
    store = PartitionDatabases(tmp_path)
    backing = DiskBacking(store, lambda key: table_partition(key, 4))
    keys = [receipt_key(customer, f"R-{n}").encode() for customer in ("C-1", "C-10", "C-2") for n in range(3)]
    backing.write([(key, b"[]", table_partition(key, 4)) for key in keys], {})
    prefix = receipt_key("C-1", "").encode()
    assert backing.keys_with_prefix(prefix) == [receipt_key("C-1", f"R-{n}").encode() for n in range(3)]
    assert table_partition(prefix, 4) == table_partition(b"C-1", 4)
    store.close()


def test_a_partition_s_own_keys_name_it_and_others_are_hashed() -> None:
    assert table_partition(b"partition:3", 4) == 3
    assert table_partition(b"partition:3:sources", 4) == 3
    assert {table_partition(f"C-{n}".encode(), 4) for n in range(50)} == {0, 1, 2, 3}
