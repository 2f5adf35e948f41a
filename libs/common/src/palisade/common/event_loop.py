"""The event loop a service runs on: uvloop by default, the standard loop on request.

uvloop (libuv underneath) runs the same asyncio code with less CPU per callback and per socket
read, which is most of what a small request costs here: gRPC's asyncio stack works on any
asyncio loop, and aiohttp, psycopg and redis-py all do. `PALISADE_<SERVICE>_EVENT_LOOP=asyncio`
falls back to the standard loop (e.g. to rule uvloop out while chasing a bug).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

import uvloop

T = TypeVar("T")

EventLoopName = Literal["uvloop", "asyncio"]


def run(main: Coroutine[Any, Any, T], loop: EventLoopName = "uvloop") -> T:
    """asyncio.run(main) on the chosen loop."""
    if loop == "uvloop":
        return uvloop.run(main)
    return asyncio.run(main)
