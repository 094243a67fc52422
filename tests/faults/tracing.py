"""Where unanswered receipts went: for a fault test whose wait for answers timed out.

A receipt crosses two agents: the ingest agent reads it from `receipts` and routes it,
in a batch, to the partition of loyalty-inputs that owns its customer; the loyalty
agent answers it there. This reads both topics from the beginning and the app's
committed offsets, and says for each unanswered receipt how far it got:

- not in `receipts` at all (the test did not send it),
- in `receipts` but never routed (lost by the ingest side),
- routed, on a loyalty-inputs partition whose committed offset is past it (taken and
  dropped, e.g. as a copy) or not yet past it (the loyalty agent did not get to it).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from faust.types import TP

from streams.envelope import decode_inputs
from streams.transport import true_end_offsets


@dataclass(frozen=True, slots=True)
class Record:
    partition: int
    offset: int
    value: bytes


async def read_all(bootstrap: str, topic: str, timeout: float = 60.0) -> tuple[list[Record], dict[int, int]]:
    """Every record of a topic, and each partition's true end offset."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        metadata = await client.fetch_all_metadata()
        partitions = sorted(metadata.partitions_for_topic(topic) or ())
    finally:
        await client.close()
    if not partitions:
        return [], {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        reported = await consumer.end_offsets(tps)
        ends = await true_end_offsets(bootstrap, {TP(tp.topic, tp.partition): end for tp, end in reported.items()})
        records: list[Record] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(at >= ends[TP(tp.topic, tp.partition)] for at, tp in zip(positions, tps, strict=True)):
                break
            for tp, batch in (await consumer.getmany(timeout_ms=200)).items():
                records += [Record(tp.partition, r.offset, r.value or b"") for r in batch]
        return records, {tp.partition: end for tp, end in ends.items()}
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        await consumer.stop()


async def trace_unanswered(bootstrap: str, prefix: str, missing: list[str]) -> str:
    """A few lines on how far the unanswered receipts got (see the module's docstring)."""
    group = f"{prefix}app"
    receipts_topic, inputs_topic = f"{prefix}receipts", f"{prefix}{group}-inputs"
    wanted = set(missing)
    receipts, receipt_ends = await read_all(bootstrap, receipts_topic)
    inputs, input_ends = await read_all(bootstrap, inputs_topic)
    receipt_commits = await committed(bootstrap, group, receipts_topic, receipt_ends)
    input_commits = await committed(bootstrap, group, inputs_topic, input_ends)

    sent: dict[str, list[tuple[int, int]]] = defaultdict(list)  # receipt id -> (partition, offset) in receipts
    for record in receipts:
        receipt_id = json.loads(record.value).get("receipt_id")
        if receipt_id in wanted:
            sent[receipt_id].append((record.partition, record.offset))
    routed: dict[str, list[tuple[int, int, int]]] = defaultdict(list)  # id -> (inputs partition, offset, source offset)
    for record in inputs:
        for envelope in decode_inputs(record.value):
            if envelope.source.topic != receipts_topic:
                continue
            receipt_id = json.loads(envelope.raw).get("receipt_id")
            if receipt_id in wanted:
                routed[receipt_id].append((record.partition, record.offset, envelope.source.offset))

    fate: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for receipt_id in missing:
        if receipt_id not in sent:
            how = "never in receipts"
        elif receipt_id not in routed:
            part = sent[receipt_id][0][0]
            how = f"in receipts[{part}], never routed"
        else:
            part, offset, _ = routed[receipt_id][-1]
            commit = input_commits.get(part)
            how = f"routed to inputs[{part}], " + (
                "committed past it" if commit is not None and commit > offset else "not committed past it"
            )
        fate[how] += 1
        examples.setdefault(how, f"{receipt_id} sent {sent.get(receipt_id)} routed {routed.get(receipt_id)}")
    lines = ["--- where the unanswered receipts went"]
    lines += [f"{n} {how}, e.g. {examples[how]}" for how, n in fate.most_common()]
    lines.append(f"receipts: ends {receipt_ends}, committed {receipt_commits}")
    lines.append(f"inputs: ends {input_ends}, committed {input_commits}")
    return "\n".join(lines)
