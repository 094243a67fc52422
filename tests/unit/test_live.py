"""The record cache: dirty states are encoded once per snapshot, in order of last change, and
reach the table only when the snapshot is stored."""

from __future__ import annotations

from dataclasses import dataclass

from streams.live import LiveStates
from streams.store import MemoryBacking


@dataclass
class Value:
    text: str
    encodes: int = 0

    def to_bytes(self) -> bytes:
        self.encodes += 1
        return self.text.encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Value:
        return cls(raw.decode())


def test_a_key_changed_many_times_is_encoded_once_per_snapshot_and_stored_when_told() -> None:
    data: dict[bytes, bytes] = {}
    live = LiveStates(MemoryBacking(data))
    value = Value("v1")
    for n in range(5):
        value.text = f"v{n}"
        live.put(b"C-1", value, 0)
        assert live.get(b"C-1", Value.from_bytes) is value
    written = live.snapshot()
    assert written == [(b"C-1", b"v4", 0)]
    assert value.encodes == 1
    assert data == {}  # not in the table until its events are delivered
    assert live.get(b"C-1", Value.from_bytes) is value  # still the decoded value meanwhile
    assert live.store(written, {}) == written
    assert data == {b"C-1": b"v4"}
    assert live.get(b"C-1", Value.from_bytes) is value
    assert live.snapshot() == []  # nothing changed since


def test_a_value_changed_after_its_snapshot_stays_dirty_and_decoded() -> None:
    data: dict[bytes, bytes] = {}
    live = LiveStates(MemoryBacking(data))
    value = Value("first")
    live.put(b"C-1", value, 0)
    written = live.snapshot()
    value.text = "second"
    live.put(b"C-1", value, 0)
    live.store(written, {})
    assert data[b"C-1"] == b"first"
    assert live.get(b"C-1", Value.from_bytes) is value
    assert live.snapshot() == [(b"C-1", b"second", 0)]


def test_records_leave_in_the_order_of_each_key_s_last_change_with_the_bookkeeping_last() -> None:
    # C-1 counted a receipt, then an input moved the frontier, then C-1 changed again: if
    # the frontier's record landed and C-1's did not, a restart would read C-1's receipt
    # again past a frontier already moved.
    live = LiveStates(MemoryBacking({}), last=lambda key: key.startswith(b"partition:"))
    live.put(b"C-1", Value("counted R"), 0)
    live.put(b"partition:0", Value("frontier moved"), 0)
    live.put(b"partition:0:sources", Value("took X"), 0)
    live.put(b"C-1", Value("closed"), 0)
    live.put(b"C-2", Value("closed"), 1)
    assert [key for key, _, _ in live.snapshot()] == [b"C-1", b"C-2", b"partition:0", b"partition:0:sources"]


def test_a_value_restored_from_the_changelog_is_decoded_afresh() -> None:
    data: dict[bytes, bytes] = {}
    live = LiveStates(MemoryBacking(data))
    live.put(b"C-1", Value("mine"), 0)
    live.store(live.snapshot(), {})
    assert live.get(b"C-1", Value.from_bytes) == Value("mine", encodes=1)
    data[b"C-1"] = b"recovered"  # table recovery after a rebalance
    live.restored([b"C-1"])
    assert live.get(b"C-1", Value.from_bytes) == Value("recovered")


def test_a_dirty_value_whose_key_was_restored_meanwhile_is_dropped_not_written() -> None:
    data: dict[bytes, bytes] = {b"C-1": b"old"}
    live = LiveStates(MemoryBacking(data))
    live.put(b"C-1", Value("changed here"), 0)
    data[b"C-1"] = b"written by the partition's new owner"
    live.restored([b"C-1"])
    assert live.snapshot() == []
    assert data[b"C-1"] == b"written by the partition's new owner"
    # And one restored between its snapshot and the store keeps what was restored.
    live.put(b"C-2", Value("mine"), 0)
    written = live.snapshot()
    data[b"C-2"] = b"restored"
    live.restored([b"C-2"])
    assert live.unrestored(written) == []
    assert live.store(written, {}) == []
    assert data[b"C-2"] == b"restored"


def test_a_revoked_partition_s_clean_entries_are_forgotten() -> None:
    data: dict[bytes, bytes] = {b"C-1": b"stored", b"C-2": b"stored"}
    live = LiveStates(MemoryBacking(data), partition_of=lambda key: int(key[-1:]) % 2)
    assert live.get(b"C-1", Value.from_bytes) == Value("stored")
    assert live.get(b"C-2", Value.from_bytes) == Value("stored")
    live.drop_partitions([1])
    assert live.cached == 1
    data[b"C-2"] = b"changed elsewhere"
    assert live.get(b"C-2", Value.from_bytes) == Value("stored")  # partition 0: still trusted
    data[b"C-1"] = b"changed elsewhere"
    assert live.get(b"C-1", Value.from_bytes) == Value("changed elsewhere")


def test_a_delete_is_a_tombstone() -> None:
    data: dict[bytes, bytes] = {b"card:7": b"owned"}
    live = LiveStates(MemoryBacking(data))
    live.delete(b"card:7", 2)
    assert live.get(b"card:7", Value.from_bytes) is None
    assert live.store(live.snapshot(), {}) == [(b"card:7", None, 2)]
    assert data == {}


def test_every_key_is_listed_new_ones_included_and_peek_does_not_decode() -> None:
    data: dict[bytes, bytes] = {b"C-1": b"stored"}
    live = LiveStates(MemoryBacking(data))
    live.put(b"C-2", Value("new"), 0)
    assert sorted(live.stored_keys()) == [b"C-1", b"C-2"]
    assert live.peek(b"C-1") == b"stored"
    assert live.peek(b"C-2") == Value("new")


def test_the_cache_forgets_clean_entries_but_never_dirty_or_unstored_ones() -> None:
    data: dict[bytes, bytes] = {f"C-{n}".encode(): b"x" for n in range(10)}
    live = LiveStates(MemoryBacking(data), capacity=4)
    unstored = Value("in a snapshot")
    live.put(b"C-9", unstored, 0)
    written = live.snapshot()
    dirty = Value("dirty")
    live.put(b"C-0", dirty, 0)
    for n in range(1, 9):
        live.get(f"C-{n}".encode(), Value.from_bytes)
    assert live.get(b"C-0", Value.from_bytes) is dirty
    assert live.get(b"C-9", Value.from_bytes) is unstored
    assert live.dirty == 1
    live.store(written, {})
    assert data[b"C-9"] == b"in a snapshot"


def test_forgetting_a_partition_s_changes_reads_the_table_again() -> None:
    data: dict[bytes, bytes] = {b"C-1": b"as committed"}
    live = LiveStates(MemoryBacking(data))
    live.put(b"C-1", Value("half changed by a bug"), 0)
    live.put(b"C-2", Value("other partition"), 1)
    live.forget(live.dirty_keys(0))
    assert live.get(b"C-1", Value.from_bytes) == Value("as committed")
    assert [key for key, _, _ in live.snapshot()] == [b"C-2"]
