"""Background tasks that stop when told to, even when a library swallowed the first cancel.

On Python 3.11, `asyncio.wait_for` drops a cancellation that arrives just as the awaited call
completes: it returns the result instead of raising CancelledError (fixed in 3.12). Libraries
built on it (aiosmtplib reads every SMTP reply through wait_for) can therefore absorb a
task.cancel(), and a loop like the mail relay's then goes back to waiting for work as if nothing
happened, so `task.cancel(); await task` hangs a shutdown forever. Every background loop of a
service is started and stopped here, which cancels again until the task has really ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

# How long to wait for a cancelled task before cancelling it again. Only shutdown waits on it.
RECANCEL_SECONDS = 0.2


async def cancel_and_wait(
    task: asyncio.Task[Any], *, recancel_seconds: float = RECANCEL_SECONDS
) -> None:
    """Cancels task and returns once it has ended, cancelling again while it goes on.

    The task's own exception, if it failed before being stopped, is retrieved and dropped: the
    task logs its own failures, and shutdown must not be turned into an error by them.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=recancel_seconds)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not report it as never retrieved


@asynccontextmanager
async def running_in_background(
    coro: Coroutine[Any, Any, None], *, name: str
) -> AsyncIterator[asyncio.Task[None]]:
    """Runs coro as a task for the duration of the block and stops it for sure on exit."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        # Not suppressing CancelledError here: one raised now is our caller's, not the task's.
        await cancel_and_wait(task)
