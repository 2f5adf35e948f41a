"""The per-account cap on new-network alert emails (sessions/new_networks.py AlertCap), through
the real path on SQLite and Postgres: logins over gRPC whose client addresses (distinct loopback
addresses 127.0.0.x, as the gateway signs them) are new networks, the alert relay and the mail
relay running in the background, and every email counted at a real SMTP catcher.

Ten parallel sign-ins from ten new networks give exactly the cap's alerts plus one "alerts
paused" email, and ten `session.new_ip` events; later new networks within the window are logged
and remembered but not emailed; once the window has rolled on (the injectable clock) alerts
resume; a "this wasn't me" report from the pause email starts the count afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Coroutine
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from auth_email_links import Mailed, mailed_auth, text_of
from smtp_catcher import SmtpCatcher, serve_smtp_catcher
from sqlalchemy.engine import make_url

from palisade_api.auth.v1 import account_pb2

from .lock_order_support import REACH_SECONDS, libpq_url, start, user_row_held

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

EMAIL = "traveller@example.com"
CAP = 5
RACERS = 10
ALERT = "New sign-in to your Palisade account"
PAUSED = "New sign-ins to your Palisade account: alerts paused"
PENDING = (
    "SELECT (SELECT count(*) FROM new_network_alerts)"
    " + (SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL AND failed_at IS NULL)"
)


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[SmtpCatcher, int]]:
    async with serve_smtp_catcher() as served:
        yield served


@pytest.fixture
async def mailed(auth_factory, smtp, database_url) -> AsyncIterator[Mailed]:
    async for harness in mailed_auth(
        auth_factory, smtp, database_url, new_network_alerts_per_day=CAP
    ):
        yield harness


async def _settled(mailed: Mailed) -> None:
    """Nothing is left to compose or to send: every alert so far is at the catcher."""
    async with asyncio.timeout(20):
        while await asyncio.to_thread(mailed.count, PENDING):
            mailed.mail.arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await mailed.mail.arrived.wait()


def _mails(mailed: Mailed, subject: str) -> list[Any]:
    return mailed.mail.to(EMAIL, subject=subject)


async def _race(mailed: Mailed, user_id: str, logins: list[Coroutine[Any, Any, None]]) -> None:
    """Runs the logins at once. On Postgres they are first held at the user row (a transaction
    holds it exclusively, as a password change would, until every login waits for it: seen
    through pg_blocking_pids), then let go together, so their cap decisions really do overlap
    (on their own, the password hashes before them spread the logins out). SQLite runs one
    writer at a time."""
    url = mailed.auth.auth_db_url
    if make_url(url).get_backend_name() != "postgresql":
        await asyncio.gather(*logins)
        return
    async with user_row_held(url, user_id, exclusive=True) as blocker:
        tasks = [start(login) for login in logins]
        await _until_waiting(url, blocker, len(tasks), tasks)
    await asyncio.gather(*tasks)


async def _until_waiting(
    url: str, blocker: int, count: int, tasks: list[asyncio.Task[None]]
) -> None:
    async with await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True) as conn:
        async with asyncio.timeout(REACH_SECONDS):
            while True:
                row = await (
                    await conn.execute(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE %s = ANY(pg_blocking_pids(pid))",
                        (blocker,),
                    )
                ).fetchone()
                assert row is not None
                if int(row[0]) >= count:
                    return
                for task in tasks:
                    if task.done():
                        task.result()  # raises what the login raised
                        raise AssertionError("a login finished without waiting for the row")
                await asyncio.sleep(0.005)  # polls a condition; no timing is assumed


def _ip_of(mail: Any) -> str:
    [ip] = [
        line.removeprefix("IP address: ")
        for line in text_of(mail).splitlines()
        if line.startswith("IP address: ")
    ]
    return ip


async def _alert_details(mailed: Mailed) -> list[str]:
    """The `alert` detail of every session.new_ip event, in the order they were written."""
    rows = await asyncio.to_thread(
        mailed.rows,
        "SELECT payload FROM outbox_events WHERE event_type = %s ORDER BY id",
        "session.new_ip",
    )
    return [json.loads(payload)["details"]["alert"] for (payload,) in rows]


async def _known_networks(mailed: Mailed, user_id: str) -> int:
    return await asyncio.to_thread(
        mailed.count, "SELECT count(*) FROM known_networks WHERE user_id = %s", user_id
    )


async def _from(mailed: Mailed, last_octet: int) -> None:
    await mailed.auth.login(EMAIL, ip=f"127.0.0.{last_octet}")


async def test_parallel_new_networks_get_the_cap_and_one_pause_email(mailed: Mailed) -> None:
    user_id = (await mailed.auth.sign_up(EMAIL)).user_id  # from 203.0.113.7: a baseline
    started = mailed.auth.clock.now()

    await _race(mailed, user_id, [_from(mailed, 10 + i) for i in range(RACERS)])
    await _settled(mailed)

    assert len(_mails(mailed, ALERT)) == CAP
    [paused] = _mails(mailed, PAUSED)
    # Every new network is in the log and remembered, emailed or not.
    details = await _alert_details(mailed)
    assert len(details) == RACERS
    assert sorted(details) == sorted(["emailed"] * CAP + ["paused"] + ["withheld"] * 4)
    assert await _known_networks(mailed, user_id) == 1 + RACERS
    # The pause email names its own sign-in and when alerts resume: 24 h after the first.
    text = text_of(paused)
    resumes = (started + timedelta(hours=24)).strftime("%Y-%m-%d %H:%M:")
    assert f"until {resumes}" in text, text
    racers = {f"127.0.0.{10 + i}" for i in range(RACERS)}
    assert _ip_of(paused) in racers
    assert "/auth/not-me?token=plsd_nm_" in text
    assert "5 we email about in 24 hours" in text
    emailed = {_ip_of(mail) for mail in [*_mails(mailed, ALERT), paused]}
    assert len(emailed) == CAP + 1  # each email about a different sign-in
    assert emailed <= racers

    # Within the window: another new network is logged and remembered, and not emailed; a
    # known one is nothing at all.
    mailed.auth.clock.advance(timedelta(hours=23))
    await _from(mailed, 40)
    await _from(mailed, 10)
    await _settled(mailed)
    assert len(_mails(mailed, ALERT)) == CAP
    assert len(_mails(mailed, PAUSED)) == 1
    assert (await _alert_details(mailed))[-1] == "withheld"
    assert len(await _alert_details(mailed)) == RACERS + 1
    assert await _known_networks(mailed, user_id) == 2 + RACERS

    # The window rolls on: alerts resume.
    mailed.auth.clock.advance(timedelta(hours=1, seconds=1))
    await _from(mailed, 41)
    await _settled(mailed)
    assert len(_mails(mailed, ALERT)) == CAP + 1
    assert (await _alert_details(mailed))[-1] == "emailed"
    assert _ip_of(_mails(mailed, ALERT)[-1]) == "127.0.0.41"


async def test_a_not_me_report_from_the_pause_email_starts_the_count_afresh(
    mailed: Mailed,
) -> None:
    await mailed.auth.sign_up(EMAIL)
    for octet in range(10, 10 + CAP + 2):  # the cap, the pause email, one withheld
        await _from(mailed, octet)
    await _settled(mailed)
    assert len(_mails(mailed, ALERT)) == CAP
    [paused] = _mails(mailed, PAUSED)
    [link] = [w for w in text_of(paused).split() if "/auth/not-me?token=" in w]
    token = link.split("token=", 1)[1]
    await mailed.accounts.ConfirmNotMe(
        account_pb2.ConfirmNotMeRequest(token=token), metadata=mailed.auth.anonymous()
    )
    # The stranger comes back from one of the withheld networks: that alert goes out.
    await _from(mailed, 10 + CAP + 1)
    await _settled(mailed)
    assert len(_mails(mailed, ALERT)) == CAP + 1
    assert _ip_of(_mails(mailed, ALERT)[-1]) == f"127.0.0.{10 + CAP + 1}"
