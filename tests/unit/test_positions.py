from streams.envelope import Envelope, Source, decode_inputs, encode_batch
from streams.positions import SourcePositions, positions_key


def test_an_input_at_or_below_the_highest_offset_taken_from_its_source_partition_is_a_copy():
    positions = SourcePositions()
    first = Source("receipts", 2, 41)
    assert not positions.taken(first)
    positions.take(first)
    assert positions.taken(first)
    assert positions.taken(Source("receipts", 2, 7))
    assert not positions.taken(Source("receipts", 2, 42))
    # Offsets of other partitions and topics are their own.
    assert not positions.taken(Source("receipts", 3, 7))
    assert not positions.taken(Source("customer-events", 2, 7))


def test_positions_survive_the_changelog_and_live_among_the_reserved_keys():
    positions = SourcePositions()
    positions.take(Source("lp.receipts", 0, 12))
    positions.take(Source("lp.status-commands", 1, 3))
    again = SourcePositions.from_bytes(positions.to_bytes())
    assert again == positions
    assert positions_key(3) == b"partition:3:sources"


def test_a_forwarded_input_says_so_on_loyalty_inputs_and_one_routed_by_ingest_does_not():
    source = Source("receipts", 1, 99, 1796000000.5)
    routed = Envelope("receipt", '{"receipt_id": "R1"}', source)
    forwarded = Envelope("receipt", '{"receipt_id": "R1", "customer_id": "C-1"}', source, forwarded=True)
    assert decode_inputs(encode_batch([routed, forwarded])) == [routed, forwarded]
    assert Envelope.from_bytes(forwarded.to_bytes()) == forwarded
    assert decode_inputs(routed.to_bytes()) == [routed]
