"""Account pre-hijacking end to end (issue 12 item 8): an attacker signs up with the victim's
address and keeps a session; when the victim proves the address (a magic link or the
verification link), the attacker's session dies on its next request (401), over real HTTP
through the gateway, whose cache the revocation feed evicts. A second sign-up on the taken,
unverified address answers exactly like a new one and tells the address's owner what it means."""

from __future__ import annotations

import asyncio
import re
import uuid
from email.message import EmailMessage
from urllib.parse import parse_qs, urlparse

import pytest

from .conftest import Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ATTACKER_PASSWORD = "attacker chose this passphrase"
_VERIFY = re.compile(r"https?://\S+/auth/verify-email\?token=[A-Za-z0-9_%-]+")
_MAGIC = re.compile(r"https?://\S+/auth/magic-link\?token=[A-Za-z0-9_%-]+")


def _victim() -> str:
    return f"victim-{uuid.uuid4().hex[:10]}@example.com"


def _token(message: EmailMessage, pattern: re.Pattern[str]) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    [link] = pattern.findall(body.get_content())
    [token] = parse_qs(urlparse(link).query)["token"]
    return token


async def _mail(suite: Suite, to: str, subject: str) -> EmailMessage:
    async with asyncio.timeout(10):
        while True:
            for message in suite.mail.to(to):
                if message["Subject"] == subject:
                    return message
            suite.mail.arrived.clear()
            await suite.mail.arrived.wait()


async def _attacker_session(suite: Suite, victim: str) -> str:
    """The attacker signs up with the victim's address, logs in and uses the session (so
    the gateway has the token cached)."""
    status, body, _ = await suite.json_call(
        "POST",
        "/v1/auth/signup",
        json={"email": victim, "password": ATTACKER_PASSWORD, "name": "Mallory"},
    )
    assert status == 201, body
    status, tokens, _ = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": victim, "password": ATTACKER_PASSWORD}
    )
    assert status == 200, tokens
    access = str(tokens["accessToken"])
    status, me, _ = await suite.json_call("GET", "/v1/me", token=access)
    assert status == 200
    assert me.get("emailVerified") is False
    return access


async def _dies_on_its_next_request(suite: Suite, access: str) -> None:
    cached = len(suite.gateway.cache)
    for _ in range(200):  # the eviction travels over the revocation feed: bounded wait
        if len(suite.gateway.cache) < cached:
            break
        await asyncio.sleep(0.01)
    status, problem, _ = await suite.json_call("GET", "/v1/me", token=access)
    assert status == 401
    assert problem["code"] == "session_revoked"


async def test_the_victims_magic_link_ends_the_attackers_session(suite: Suite) -> None:
    victim = _victim()
    attacker = await _attacker_session(suite, victim)
    status, _, _ = await suite.call("POST", "/v1/auth/magic-links", json={"email": victim})
    assert status == 202
    link = _token(await _mail(suite, victim, "Your Palisade sign-in link"), _MAGIC)
    status, tokens, _ = await suite.json_call(
        "POST", "/v1/auth/magic-links/redeem", json={"token": link}
    )
    assert status == 200, tokens
    await _dies_on_its_next_request(suite, attacker)
    status, me, _ = await suite.json_call("GET", "/v1/me", token=tokens["accessToken"])
    assert status == 200  # the victim's own session, made after the proof
    assert me["emailVerified"] is True


async def test_the_verification_link_ends_the_attackers_session(suite: Suite) -> None:
    victim = _victim()
    attacker = await _attacker_session(suite, victim)
    # The sign-up's verification email went to the victim, not the attacker.
    token = _token(await _mail(suite, victim, "Verify your Palisade email address"), _VERIFY)
    status, _, _ = await suite.call(
        "POST", "/v1/auth/email-verification/confirm", json={"token": token}
    )
    assert status == 204
    await _dies_on_its_next_request(suite, attacker)
    status, _, _ = await suite.call(
        "POST", "/v1/auth/refresh", json={"refreshToken": "plsd_rt_" + "A" * 43}
    )
    assert status == 401


async def test_signing_up_on_a_taken_unverified_address_answers_alike_and_warns(
    suite: Suite,
) -> None:
    victim, fresh = _victim(), _victim()
    await _attacker_session(suite, victim)
    answers = []
    for email in (victim, fresh):  # the victim tries to sign up; a brand-new address too
        status, body, headers = await suite.json_call(
            "POST",
            "/v1/auth/signup",
            json={"email": email, "password": "victim's own good passphrase", "name": "Vic"},
        )
        answers.append((status, sorted(body), headers.get("Content-Type")))
    assert answers[0] == answers[1]
    assert answers[0][0] == 201
    notice = await _mail(suite, victim, "Sign-up attempt with your email address")
    body = notice.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    assert "never been verified" in text
    assert "someone else may have" in text
