"""palisade.common.relay_loop: the wakeup (from a thread, from a committed connection) and the
loop (more at once, errors survived), on a real SQLite engine."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from palisade.common.db import create_engine
from palisade.common.relay_loop import Wakeup, relay_forever
from palisade.common.tasks import running_in_background

FLAG = "palisade.test.relay_loop"


async def test_a_notify_from_another_thread_wakes_the_waiter() -> None:
    wakeup = Wakeup()
    engine = create_engine(f"sqlite+aiosqlite:///{Path('/nonexistent-never-opened')}")
    try:
        async with wakeup.ring_on_checkin(engine, FLAG):  # binds the wakeup to this loop
            waiting = asyncio.create_task(wakeup.wait(30))
            await asyncio.sleep(0)
            threading.Thread(target=wakeup.notify).start()
            async with asyncio.timeout(5):
                await waiting
    finally:
        await engine.dispose()


async def test_wait_returns_after_its_timeout_when_nobody_rings() -> None:
    wakeup = Wakeup()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wakeup.wait(0.05)
    assert loop.time() - started >= 0.04


async def test_a_connection_returning_with_the_flag_rings(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    wakeup = Wakeup()
    try:
        async with wakeup.ring_on_checkin(engine, FLAG):
            async with engine.connect() as conn:  # no flag: no ring
                await conn.execute(text("SELECT 1"))
            waiting = asyncio.create_task(wakeup.wait(0.3))
            async with engine.begin() as conn:
                await conn.execute(text("SELECT 1"))
                conn.info[FLAG] = True
            loop = asyncio.get_running_loop()
            started = loop.time()
            await waiting
            assert loop.time() - started < 0.25
            async with engine.connect() as conn:
                assert FLAG not in conn.info  # taken off when it rang
    finally:
        await engine.dispose()


async def test_the_loop_goes_on_at_once_while_more_is_due_and_survives_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    done = asyncio.Event()
    wakeup = Wakeup()
    script = iter(["more", "more", "boom", "idle", "stop"])

    async def pass_once() -> bool:
        step = next(script)
        calls.append(step)
        if step in ("boom", "idle"):
            wakeup.notify()  # as a commit during the pass would: the wait after it is cut short
        if step == "boom":
            raise RuntimeError("a database hiccup")
        if step == "stop":
            done.set()
        return step == "more"

    log = logging.getLogger("palisade.test.relay_loop")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.ERROR, logger=log.name):
        async with running_in_background(
            relay_forever(pass_once, wakeup=wakeup, poll_seconds=30, log=log, what="test relay"),
            name="test-relay",
        ):
            async with asyncio.timeout(5):
                await done.wait()
    assert calls == ["more", "more", "boom", "idle", "stop"]
    assert loop.time() - started < 5  # never sat out a 30 s poll
    assert "test relay pass failed; will retry" in caplog.text
