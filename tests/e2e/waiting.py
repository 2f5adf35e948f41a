"""Waiting for what travels asynchronously (a revocation over the feed to the gateway's cache),
bounded by a deadline instead of a fixed sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def until(check: Callable[[], Awaitable[bool]], *, within: float) -> None:
    """Returns once check() is true; fails the test if it is not within `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        assert loop.time() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)
