"""Email verification, email change and PKCE-bound magic links end to end (issue 12 items 1, 3
and 8): real HTTP through the gateway, real SMTP, the links followed from the emails."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import uuid
from email.message import EmailMessage
from urllib.parse import parse_qs, urlparse

import pytest

from .conftest import Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

PASSWORD = "correct horse battery staple"
VERIFY_SUBJECT = "Verify your Palisade email address"
CHANGE_SUBJECT = "Confirm your new Palisade email address"
_VERIFY = re.compile(r"https?://\S+/auth/verify-email\?token=[A-Za-z0-9_%-]+")
_MAGIC = re.compile(r"https?://\S+/auth/magic-link\?token=[A-Za-z0-9_%-]+")


def _address() -> str:
    return f"ev-{uuid.uuid4().hex[:10]}@example.com"


def _token(message: EmailMessage, pattern: re.Pattern[str] = _VERIFY) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    [link] = pattern.findall(body.get_content())
    [token] = parse_qs(urlparse(link).query)["token"]
    return token


async def _mails(suite: Suite, to: str, subject: str, count: int = 1) -> list[EmailMessage]:
    async with asyncio.timeout(10):
        while True:
            found = [m for m in suite.mail.to(to) if m["Subject"] == subject]
            if len(found) >= count:
                return found
            suite.mail.arrived.clear()
            await suite.mail.arrived.wait()


async def _sign_up(suite: Suite, email: str) -> dict:
    status, body, _ = await suite.json_call(
        "POST", "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Ada"}
    )
    assert status == 201, body
    return dict(body)


async def _log_in(suite: Suite, email: str) -> str:
    status, body, _ = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert status == 200, body
    return str(body["accessToken"])


async def _confirm(suite: Suite, token: str):
    return await suite.json_call(
        "POST", "/v1/auth/email-verification/confirm", json={"token": token}
    )


async def _me(suite: Suite, access: str):
    return await suite.json_call("GET", "/v1/me", token=access)


async def test_the_emailed_link_verifies_the_address(suite: Suite) -> None:
    email = _address()
    await _sign_up(suite, email)
    [mail] = await _mails(suite, email, VERIFY_SUBJECT)
    token = _token(mail)
    assert token.startswith("plsd_ev_")
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None
    assert f"http://localhost:8080/auth/verify-email?token={token}" in body.get_content()
    status, me, _ = await _me(suite, await _log_in(suite, email))
    assert status == 200
    assert me["emailVerified"] is False

    status, body, _ = await _confirm(suite, token)
    assert status == 204, body
    status, problem, _ = await _confirm(suite, token)
    assert status == 400
    assert problem["code"] == "invalid_verification_link"
    status, me, _ = await _me(suite, await _log_in(suite, email))
    assert me["emailVerified"] is True


async def test_resends_are_rate_limited_per_user_and_the_newest_link_wins(suite: Suite) -> None:
    email = _address()
    await _sign_up(suite, email)
    access = await _log_in(suite, email)
    for _ in range(3):  # the default allowance: 3 per hour
        status, _, _ = await suite.call("POST", "/v1/me/email-verification", json={}, token=access)
        assert status == 202
    status, problem, headers = await suite.json_call(
        "POST", "/v1/me/email-verification", json={}, token=access
    )
    assert status == 429
    assert problem["code"] == "rate_limited"
    assert int(headers["Retry-After"]) > 0
    mails = await _mails(suite, email, VERIFY_SUBJECT, 4)
    older, newest = _token(mails[0]), _token(mails[-1])
    assert (await _confirm(suite, older))[0] == 400
    assert (await _confirm(suite, newest))[0] == 204
    status, _, _ = await suite.call("POST", "/v1/me/email-verification", json={})
    assert status == 401  # bearer only


async def test_email_change_over_http(suite: Suite) -> None:
    old, new = _address(), _address()
    await _sign_up(suite, old)
    await _confirm(suite, _token((await _mails(suite, old, VERIFY_SUBJECT))[0]))
    access = await _log_in(suite, old)
    # A taken address answers the same as a free one; every request voids the previous link,
    # so the free address is asked for last.
    other = _address()
    await _sign_up(suite, other)
    status, _, _ = await suite.call("POST", "/v1/me/email", json={"newEmail": other}, token=access)
    assert status == 202
    status, problem, _ = await suite.json_call(
        "POST", "/v1/me/email", json={"newEmail": "nope"}, token=access
    )
    assert status == 400
    assert problem["code"] == "invalid_email"
    status, _, _ = await suite.call("POST", "/v1/me/email", json={"newEmail": new}, token=access)
    assert status == 202

    [mail] = await _mails(suite, new, CHANGE_SUBJECT)
    status, body, _ = await _confirm(suite, _token(mail))
    assert status == 204, body
    status, me, _ = await _me(suite, access)  # the session survives the change
    assert status == 200
    assert me["email"] == new
    assert me["emailVerified"] is True
    await _log_in(suite, new)
    status, _, _ = await suite.call(
        "POST", "/v1/auth/login", json={"email": old, "password": PASSWORD}
    )
    assert status == 401
    await _mails(suite, old, "The email address of your Palisade account was changed")


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def test_a_pkce_bound_magic_link_over_http(suite: Suite) -> None:
    email = _address()
    await _sign_up(suite, email)
    verifier = secrets.token_urlsafe(32)
    status, problem, _ = await suite.json_call(
        "POST", "/v1/auth/magic-links", json={"email": email, "codeChallenge": "too-short"}
    )
    assert status == 400
    assert problem["code"] == "invalid_code_challenge"
    status, _, _ = await suite.call(
        "POST",
        "/v1/auth/magic-links",
        json={"email": email, "codeChallenge": _challenge(verifier)},
    )
    assert status == 202
    [mail] = await _mails(suite, email, "Your Palisade sign-in link")
    token = _token(mail, _MAGIC)

    redeem = "/v1/auth/magic-links/redeem"
    status, problem, _ = await suite.json_call("POST", redeem, json={"token": token})
    assert status == 401
    assert problem["code"] == "code_verifier_required"
    status, problem, _ = await suite.json_call(
        "POST", redeem, json={"token": token, "codeVerifier": secrets.token_urlsafe(32)}
    )
    assert status == 401
    assert problem["code"] == "code_verifier_mismatch"
    status, tokens, _ = await suite.json_call(
        "POST", redeem, json={"token": token, "codeVerifier": verifier}
    )
    assert status == 200, tokens
    status, me, _ = await _me(suite, tokens["accessToken"])
    assert me["emailVerified"] is True  # the link proved the address
