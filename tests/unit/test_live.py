"""The record cache: dirty states reach the table and the changelog once per flush, in order of last change."""

from __future__ import annotations

from dataclasses import dataclass

from streams.live import LiveStates


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


class Changelog:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None, int]] = []

    def __call__(self, key: bytes, value: bytes | None, partition: int) -> None:
        self.records.append((key, value, partition))


def test_a_key_changed_many_times_is_encoded_and_written_once_per_flush() -> None:
    data: dict[bytes, bytes] = {}
    changelog = Changelog()
    live = LiveStates(data, changelog)
    value = Value("v1")
    for n in range(5):
        value.text = f"v{n}"
        live.put(b"C-1", value, 0)
        assert live.get(b"C-1", Value.from_bytes) is value
    assert data == {} and changelog.records == []
    assert live.flush() == 1
    assert value.encodes == 1
    assert changelog.records == [(b"C-1", b"v4", 0)]
    assert data == {b"C-1": b"v4"}
    assert live.flush() == 0  # nothing changed since


def test_records_leave_in_the_order_of_each_key_s_last_change() -> None:
    changelog = Changelog()
    live = LiveStates({}, changelog)
    live.put(b"partition:0", Value("frontier moved"), 0)
    live.put(b"C-1", Value("closed"), 0)
    live.put(b"C-2", Value("closed"), 0)
    live.put(b"partition:0", Value("frontier walked"), 0)
    live.flush()
    assert [key for key, _, _ in changelog.records] == [b"C-1", b"C-2", b"partition:0"]


def test_a_partition_s_bookkeeping_is_written_after_every_state_of_the_flush() -> None:
    # C-1 counted a receipt, then an input moved the frontier, then C-1 changed again: if
    # the frontier's record landed and C-1's did not, a restart would read C-1's receipt
    # again past a frontier already moved.
    changelog = Changelog()
    live = LiveStates({}, changelog, last=lambda key: key.startswith(b"partition:"))
    live.put(b"C-1", Value("counted R"), 0)
    live.put(b"partition:0", Value("frontier moved"), 0)
    live.put(b"partition:0:sources", Value("took X"), 0)
    live.put(b"C-1", Value("closed"), 0)
    live.put(b"C-2", Value("closed"), 1)
    live.flush()
    assert [key for key, _, _ in changelog.records] == [b"C-1", b"C-2", b"partition:0", b"partition:0:sources"]


def test_a_value_restored_from_the_changelog_is_decoded_afresh() -> None:
    data: dict[bytes, bytes] = {}
    live = LiveStates(data, Changelog())
    live.put(b"C-1", Value("mine"), 0)
    live.flush()
    assert live.get(b"C-1", Value.from_bytes) == Value("mine", encodes=1)
    data[b"C-1"] = b"recovered"  # table recovery after a rebalance stores new bytes objects
    assert live.get(b"C-1", Value.from_bytes) == Value("recovered")


def test_a_dirty_value_whose_key_was_restored_meanwhile_is_dropped_not_written() -> None:
    data: dict[bytes, bytes] = {b"C-1": b"old"}
    changelog = Changelog()
    live = LiveStates(data, changelog)
    live.put(b"C-1", Value("changed here"), 0)
    data[b"C-1"] = b"written by the partition's new owner"
    assert live.flush() == 0
    assert changelog.records == []
    assert data[b"C-1"] == b"written by the partition's new owner"


def test_a_delete_is_a_tombstone_at_the_flush() -> None:
    data: dict[bytes, bytes] = {b"card:7": b"owned"}
    changelog = Changelog()
    live = LiveStates(data, changelog)
    live.delete(b"card:7", 2)
    assert live.get(b"card:7", Value.from_bytes) is None
    live.flush()
    assert changelog.records == [(b"card:7", None, 2)]
    assert data == {}


def test_every_key_is_listed_new_ones_included_and_peek_does_not_decode() -> None:
    data: dict[bytes, bytes] = {b"C-1": b"stored"}
    live = LiveStates(data, Changelog())
    live.put(b"C-2", Value("new"), 0)
    assert sorted(live.all_keys()) == [b"C-1", b"C-2"]
    assert live.peek(b"C-1") == b"stored"
    assert live.peek(b"C-2") == Value("new")


def test_the_cache_forgets_clean_entries_but_never_dirty_ones() -> None:
    data: dict[bytes, bytes] = {f"C-{n}".encode(): b"x" for n in range(10)}
    live = LiveStates(data, Changelog(), capacity=4)
    dirty = Value("dirty")
    live.put(b"C-0", dirty, 0)
    for n in range(1, 10):
        live.get(f"C-{n}".encode(), Value.from_bytes)
    assert live.get(b"C-0", Value.from_bytes) is dirty
    assert live.dirty == 1
