"""cancel_and_wait / running_in_background: a stop that a swallowed cancel cannot defeat."""

from __future__ import annotations

import asyncio

import pytest

from palisade.common.tasks import cancel_and_wait, running_in_background


async def _swallows_cancels(times: int, stopped: list[str]) -> None:
    """A loop that loses `times` cancellations (as Python 3.11's wait_for can), then stops."""
    lost = 0
    while True:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if lost == times:
                stopped.append("cancelled")
                raise
            lost += 1


@pytest.mark.parametrize("swallowed", [0, 1, 3])
async def test_cancel_and_wait_cancels_again_until_the_task_has_ended(swallowed: int) -> None:
    stopped: list[str] = []
    task = asyncio.create_task(_swallows_cancels(swallowed, stopped))
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await cancel_and_wait(task, recancel_seconds=0.01)
    assert task.cancelled()
    assert stopped == ["cancelled"]


async def test_a_single_cancel_is_not_enough_for_such_a_task() -> None:
    # The pattern cancel_and_wait replaces: cancel() once, then await. It never returns.
    task = asyncio.create_task(_swallows_cancels(1, []))
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done
    await cancel_and_wait(task, recancel_seconds=0.01)


async def test_a_task_that_failed_before_the_stop_does_not_fail_the_stop() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    async with running_in_background(fails(), name="fails") as task:
        await asyncio.wait({task})
    assert isinstance(task.exception(), RuntimeError)


async def test_running_in_background_stops_the_task_when_the_block_ends() -> None:
    stopped: list[str] = []
    async with running_in_background(_swallows_cancels(2, stopped), name="loop") as task:
        await asyncio.sleep(0)
    assert task.cancelled()
    assert stopped == ["cancelled"]


async def test_the_callers_own_cancellation_still_propagates() -> None:
    started = asyncio.Event()

    async def owner() -> None:
        async with running_in_background(asyncio.Event().wait(), name="child"):  # type: ignore[arg-type]
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(owner())
    await started.wait()
    await cancel_and_wait(task, recancel_seconds=0.01)
    assert task.cancelled()
