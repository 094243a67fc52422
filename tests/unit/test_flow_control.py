"""Stream buffers survive the second resume of table recovery, and only that one."""

from __future__ import annotations

from mode.utils.queues import FlowControlQueue

from streams.app import FlowControlKeepingEvents


def running() -> FlowControlKeepingEvents:
    """Flow control as table recovery leaves it once it starts: created suspended, then resumed."""
    flow = FlowControlKeepingEvents()
    assert not flow.is_active()
    flow.resume()
    return flow


def buffered(flow: FlowControlKeepingEvents) -> FlowControlQueue[str]:
    queue: FlowControlQueue[str] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    queue.put_nowait("fetched after the seek")
    return queue


async def test_resuming_a_running_flow_keeps_what_was_fetched() -> None:
    flow = running()
    queue = buffered(flow)
    flow.resume()  # recovery completed; the flow was never suspended since it started
    assert queue.qsize() == 1
    assert flow.is_active()


async def test_resuming_after_a_rebalance_suspended_the_flow_empties_the_buffers() -> None:
    flow = running()
    queue = buffered(flow)
    flow.suspend()  # partitions revoked: the buffered event may belong to another worker now
    assert not flow.is_active()
    flow.resume()
    assert queue.qsize() == 0
    assert flow.is_active()


async def test_an_explicit_clear_still_empties_the_buffers() -> None:
    flow = running()
    queue = buffered(flow)
    flow.clear()
    assert queue.qsize() == 0
