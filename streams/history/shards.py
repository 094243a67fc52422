"""A replay's shards in processes of their own: `loyalty replay` on every core.

models/shards.py splits the history by customer and says why the shards add up
to the replay in one piece. Here each shard runs in a forked child, which
inherits the history already read (nothing is copied to it but the pages it
writes) and sends back its customers, cards and frontiers as bytes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from models.history import HistoryRecord, Replayer
from models.schema import LoyaltyConfig
from models.shards import Settle, ShardResult, SplitFailed, rebuild
from streams.history.reading import replaying, within

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Below this many inputs a split costs more (two forks, the states sent back) than it saves.
MIN_SPLIT = 20_000


def default_workers() -> int:
    """One process per core this process may run on; one where processes cannot be forked."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1  # the children inherit the history read; a spawned one would have to be sent it
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Rebuilt:
    replayer: Replayer
    workers: int  # 1: replayed in this process
    rounds: int  # how many times the shards ran (2 when a receipt's guess mattered)
    #: What `settle` made of each process's customers (`models.shards.rebuild`); with it, the
    #: replayer may hold no customers (a split sends back only what `settle` made of them).
    settled: list[Any] = field(default_factory=list)


def rebuild_state(
    config: LoyaltyConfig,
    records: Sequence[HistoryRecord],
    partitioner: Callable[[str], int],
    partitions: int,
    workers: int,
    until: datetime | None = None,
    *,
    min_split: int = MIN_SPLIT,
    since: datetime | None = None,
    settle: Settle | None = None,
) -> Rebuilt:
    """The records replayed by `workers` processes (in this one if 1, or if there are fewer than
    `min_split`); `until` as `Replayer.finish`; receipts issued before `since` left out (as
    streams/history.within); `settle` run on each process's customers where they were rebuilt.
    A split that does not hold is replayed again in one piece."""
    if workers > 1 and len(records) >= min_split and "fork" in multiprocessing.get_all_start_methods():
        try:
            with replaying():  # the states read back too make no cycles, and there are many
                replayer, rounds, settled = rebuild(
                    config, records, partitioner, partitions, workers, _noted, until, since, settle
                )
            return Rebuilt(replayer, workers, rounds, settled)
        except SplitFailed as exc:
            log.warning("replaying in one process: %s", exc)
    if since is not None:
        records = list(within(records, since, None))
    replayer = Replayer(config, partitioner, partitions, state_only=True)
    with replaying():
        for record in records:
            replayer.feed(record)
        if until is not None:
            replayer.finish(until)
        settled = [settle(replayer)] if settle is not None else []
    return Rebuilt(replayer, 1, 1, settled)


def _noted(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """`forked`, saying so when a shard had to replay itself again with every receipt message
    made (`ShardResult.remade`): the split then takes up to twice as long."""
    answers = forked(tasks)
    remade = sum(1 for answer in answers if isinstance(answer, ShardResult) and answer.remade)
    if remade:
        log.warning("%d shard(s) replayed again with every receipt message made (refused receipts last)", remade)
    return answers


# The tasks the children inherit when forked; set only while they run.
_tasks: list[Callable[[], Any]] = []


@dataclass(frozen=True)
class _Failed:
    trace: str


def forked(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Runs each task in a forked child at once, and returns what each returned (pickled back)."""
    global _tasks
    context = multiprocessing.get_context("fork")
    _tasks = list(tasks)
    try:
        pipes: list[Connection] = []
        children = []
        with replaying():  # frozen: no collection in a child touches the parent's pages
            for number in range(len(tasks)):
                receiving, sending = context.Pipe(duplex=False)
                child = context.Process(target=_child, args=(number, sending), daemon=True)
                child.start()
                sending.close()
                pipes.append(receiving)
                children.append(child)
            answers: list[Any] = []
            try:
                answers = [pipe.recv() for pipe in pipes]
            except EOFError:
                raise RuntimeError("a replay process died before it answered") from None
            finally:
                for child in children:
                    if len(answers) < len(children):
                        child.terminate()  # an answer that could not be read: the others may block sending theirs
                    child.join()
    finally:
        _tasks = []
    for answer in answers:
        if isinstance(answer, _Failed):
            raise RuntimeError(f"a replay process failed:\n{answer.trace}")
    return answers


def _child(number: int, pipe: Connection) -> None:
    try:
        with replaying():
            answer = _tasks[number]()
    except BaseException:
        answer = _Failed(traceback.format_exc())
    pipe.send(answer)
    pipe.close()
