"""New-network sign-in alerts over HTTP, with real client addresses and a real SMTP catcher.

Loopback addresses other than 127.0.0.1 (127.0.0.2, ...) are distinct client IPs: a second
aiohttp session bound to one of them is a person signing in from somewhere else. The alert is
sent once per new network, never for the network the account was made from, is neither made
nor suppressed by a spoofed X-Forwarded-For, and its "this wasn't me" link ends every session
of the account, once.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage

import aiohttp
import psycopg
import pytest
from sqlalchemy.engine import make_url

from .conftest import PASSWORD, Suite
from .waiting import until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ALERT = "New sign-in to your Palisade account"
_LINK = re.compile(r"https?://\S+/auth/not-me\?token=(plsd_nm_[A-Za-z0-9_\-%]+)")


@asynccontextmanager
async def client_from(ip: str) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client whose connections come from `ip` (a loopback address)."""
    connector = aiohttp.TCPConnector(local_addr=(ip, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def log_in(
    suite: Suite, http: aiohttp.ClientSession, email: str, headers: dict[str, str] | None = None
) -> dict:
    async with http.post(
        suite.url("/v1/auth/login"),
        json={"email": email, "password": PASSWORD},
        headers=headers or {},
    ) as response:
        body = await response.json()
        assert response.status == 200, body
        return dict(body)


async def new_ip_events(suite: Suite, user_id: str) -> int:
    """How many session.new_ip events the user has in auth's outbox (written with the login;
    the address itself is stripped from a row once it is forwarded to audit)."""
    url = make_url(suite.auth_database_url).set(drivername="postgresql")
    async with await psycopg.AsyncConnection.connect(
        url.render_as_string(hide_password=False)
    ) as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) FROM outbox_events"
                " WHERE event_type = 'session.new_ip' AND payload::json->>'subject' = %s",
                (user_id,),
            )
        ).fetchone()
    assert row is not None
    return int(row[0])


async def pending_alerts(suite: Suite) -> int:
    url = make_url(suite.auth_database_url).set(drivername="postgresql")
    async with await psycopg.AsyncConnection.connect(
        url.render_as_string(hide_password=False)
    ) as conn:
        alerts = await (await conn.execute("SELECT count(*) FROM new_network_alerts")).fetchone()
        mails = await (
            await conn.execute("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL")
        ).fetchone()
    assert alerts is not None
    assert mails is not None
    return int(alerts[0]) + int(mails[0])


async def settled_alerts(suite: Suite, email: str) -> list[EmailMessage]:
    """Every alert to `email`, once nothing is left to compose or send."""
    async with asyncio.timeout(15):
        while await pending_alerts(suite):
            suite.mail.arrived.clear()
            with_timeout = asyncio.timeout(0.2)
            try:
                async with with_timeout:
                    await suite.mail.arrived.wait()
            except TimeoutError:
                pass
    return suite.mail.to(email, subject=ALERT)


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


async def test_one_alert_per_new_network_and_never_for_a_known_one(suite: Suite) -> None:
    email = f"newip-{uuid.uuid4().hex[:10]}@example.com"
    user_id = await suite.sign_up(email)  # from 127.0.0.1: the sign-up's network is known

    await suite.log_in(email)  # the network the account was made from
    assert await new_ip_events(suite, user_id) == 0

    async with client_from("127.0.0.2") as elsewhere:
        await log_in(suite, elsewhere, email)
        assert await new_ip_events(suite, user_id) == 1
        await log_in(suite, elsewhere, email)  # the same network again: nothing
        assert await new_ip_events(suite, user_id) == 1

    [alert] = await settled_alerts(suite, email)
    text = text_of(alert)
    assert "IP address: 127.0.0.2" in text
    assert "Signed in with: password" in text
    assert "When: " in text
    assert " UTC" in text
    assert _LINK.search(text), text
    assert PASSWORD not in text


async def test_a_spoofed_forwarded_for_neither_triggers_nor_suppresses(suite: Suite) -> None:
    email = f"newip-spoof-{uuid.uuid4().hex[:10]}@example.com"
    user_id = await suite.sign_up(email)

    # From the known network, claiming a new one: the gateway trusts no such header from a
    # client, so nothing is new.
    await log_in(suite, suite.http, email, {"X-Forwarded-For": "203.0.113.9"})
    assert await new_ip_events(suite, user_id) == 0

    # From a new network, claiming the known one: still new.
    async with client_from("127.0.0.3") as elsewhere:
        await log_in(suite, elsewhere, email, {"X-Forwarded-For": "127.0.0.1"})
    assert await new_ip_events(suite, user_id) == 1
    [alert] = await settled_alerts(suite, email)
    assert "IP address: 127.0.0.3" in text_of(alert)  # the connection's address, not the header


async def test_the_not_me_link_ends_every_session_once(suite: Suite) -> None:
    email = f"newip-notme-{uuid.uuid4().hex[:10]}@example.com"
    await suite.sign_up(email)
    mine = (await suite.log_in(email))["accessToken"]
    async with client_from("127.0.0.4") as stranger:
        theirs = (await log_in(suite, stranger, email))["accessToken"]
    [alert] = await settled_alerts(suite, email)
    match = _LINK.search(text_of(alert))
    assert match is not None
    token = match.group(1)

    for access in (mine, theirs):
        status, _, _ = await suite.json_call("GET", "/v1/me", token=access)
        assert status == 200

    # Raced: exactly one report wins; the rest get the one answer for a spent link.
    results = await asyncio.gather(
        *(suite.json_call("POST", "/v1/auth/not-me", json={"token": token}) for _ in range(8))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [204] + [400] * 7, results
    assert all(
        body["code"] == "invalid_not_me_link" for status, body, _ in results if status == 400
    ), results

    # Every session ended: both tokens fail as soon as the revocation feed has evicted them
    # from the gateway's cache (within a second, as for any revocation).
    async def both_refused() -> bool:
        answers = [(await suite.json_call("GET", "/v1/me", token=t))[0] for t in (mine, theirs)]
        return answers == [401, 401]

    await until(both_refused, within=3.0)

    # A fresh login works (the owner still has the account), and the spent link stays spent.
    await suite.log_in(email)
    status, body, _ = await suite.json_call("POST", "/v1/auth/not-me", json={"token": token})
    assert status == 400
    assert body["code"] == "invalid_not_me_link"


@pytest.mark.parametrize(
    "token",
    ["", "nonsense", "plsd_nm_" + "A" * 43, "plsd_ev_" + "A" * 43, "plsd_nm_" + "A" * 5000],
)
async def test_bad_not_me_tokens_get_one_clear_answer(suite: Suite, token: str) -> None:
    status, body, _ = await suite.json_call("POST", "/v1/auth/not-me", json={"token": token})
    assert 400 <= status < 500, body
    assert body["code"] == "invalid_not_me_link"
