"""Password reset end to end: the email arrives at a real SMTP server, the test follows its link
over HTTP through the gateway (SECURITY.md 8, 16, 42; HTTP-API.md /v1/auth/password-reset)."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta
from email.message import EmailMessage
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest

from .conftest import PASSWORD, Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

NEW = "a freshly chosen passphrase"
RESET_SUBJECT = "Reset your Palisade password"
NOTICE_SUBJECT = "Your Palisade password was reset"
_LINK = re.compile(r"https?://\S+/auth/reset-password\?token=[A-Za-z0-9_%-]+")
# What a client (or an observer) can tell two answers apart by; Date and the request id are
# per response for everyone.
_HEADERS = ("Content-Type", "Content-Length", "Cache-Control", "Retry-After")


def _email() -> str:
    return f"reset-{uuid.uuid4().hex[:10]}@example.com"


def _text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


async def _request(suite: Suite, email: str, ip: str | None = None):
    headers = {"X-Forwarded-For": ip} if ip else None  # ignored: no trusted proxy here
    return await suite.call(
        "POST", "/v1/auth/password-reset", json={"email": email}, headers=headers
    )


async def _mails(suite: Suite, email: str, subject: str, count: int) -> list[EmailMessage]:
    async with asyncio.timeout(10):
        while len(found := [m for m in suite.mail.to(email) if m["Subject"] == subject]) < count:
            suite.mail.arrived.clear()
            await suite.mail.arrived.wait()
    return found


async def _emailed_link(suite: Suite, email: str, nth: int = 1) -> str:
    status, _, body = await _request(suite, email)
    assert (status, body) == (202, b"{}")
    message = (await _mails(suite, email, RESET_SUBJECT, nth))[nth - 1]
    [link] = _LINK.findall(_text(message))
    return link


def _token_of(link: str) -> str:
    [token] = parse_qs(urlparse(link).query)["token"]
    return token


async def _confirm(suite: Suite, token: str, password: str = NEW, **second_factor: str):
    return await suite.call(
        "POST",
        "/v1/auth/password-reset/confirm",
        json={"token": token, "newPassword": password, **second_factor},
    )


async def _login(suite: Suite, email: str, password: str):
    return await suite.json_call(
        "POST", "/v1/auth/login", json={"email": email, "password": password}
    )


async def _evicted(suite: Suite) -> None:
    """The revocation travels over the feed: wait (wall time) until the gateway dropped every
    cached token, so no request slips through after it."""
    for _ in range(500):
        if len(suite.gateway.cache) == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the gateway still caches a revoked token")


async def test_a_reset_over_http_changes_the_password_and_ends_every_session(
    suite: Suite,
) -> None:
    email = _email()
    first = await suite.sign_up_and_log_in(email)
    status, second, _ = await _login(suite, email, PASSWORD)
    assert status == 200
    for tokens in (first, second):  # validated once: now answered from the gateway's cache
        assert (await suite.call("GET", "/v1/me", token=tokens["accessToken"]))[0] == 200

    link = await _emailed_link(suite, email)
    assert link.startswith("http://localhost:8080/auth/reset-password?token=plsd_pr_")
    status, headers, body = await _confirm(suite, _token_of(link))
    assert (status, body) == (204, b"")
    assert headers["Cache-Control"] == "no-store"

    await _evicted(suite)
    for tokens in (first, second):
        status, problem, _ = await suite.json_call("GET", "/v1/me", token=tokens["accessToken"])
        assert (status, problem["code"]) == (401, "session_revoked")
    status, problem, _ = await _login(suite, email, PASSWORD)
    assert (status, problem["code"]) == (401, "invalid_credentials")
    status, tokens, _ = await _login(suite, email, NEW)
    assert status == 200
    assert "accessToken" in tokens
    [notice] = await _mails(suite, email, NOTICE_SUBJECT, 1)
    assert NEW not in _text(notice)
    assert _token_of(link) not in _text(notice)

    status, headers, body = await _confirm(suite, _token_of(link), "yet another passphrase")
    assert status == 401
    assert b'"invalid_reset_token"' in body


async def test_known_and_unknown_emails_get_the_same_answer(suite: Suite) -> None:
    known = _email()
    await suite.sign_up_and_log_in(known)
    unknown = _email()
    (s1, h1, b1), (s2, h2, b2) = [await _request(suite, email) for email in (known, unknown)]
    assert (s1, b1) == (s2, b2) == (202, b"{}")
    assert [h1.get(name) for name in _HEADERS] == [h2.get(name) for name in _HEADERS]
    assert sorted(h1.keys()) == sorted(h2.keys())
    await _mails(suite, known, RESET_SUBJECT, 1)
    await asyncio.sleep(0)  # let any (wrong) delivery to the unknown address happen first
    assert suite.mail.to(unknown) == []


async def test_twenty_parallel_confirmations_give_one_reset(suite: Suite) -> None:
    email = _email()
    await suite.sign_up_and_log_in(email)
    token = _token_of(await _emailed_link(suite, email))
    results = await asyncio.gather(
        *(_confirm(suite, token, f"racing passphrase number {i}") for i in range(20))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [204] + [401] * 19, statuses
    [winner] = [i for i, (status, _, _) in enumerate(results) if status == 204]
    assert (await _login(suite, email, f"racing passphrase number {winner}"))[0] == 200


async def test_a_link_dies_after_thirty_minutes(suite: Suite) -> None:
    email = _email()
    await suite.sign_up_and_log_in(email)
    token = _token_of(await _emailed_link(suite, email))
    suite.clock.advance(timedelta(minutes=30))
    status, problem, _ = await suite.json_call(
        "POST", "/v1/auth/password-reset/confirm", json={"token": token, "newPassword": NEW}
    )
    assert (status, problem["code"]) == (401, "reset_token_expired")
    assert (await _login(suite, email, PASSWORD))[0] == 200

    token = _token_of(await _emailed_link(suite, email, nth=2))
    suite.clock.advance(timedelta(minutes=29, seconds=59))
    assert (await _confirm(suite, token))[0] == 204


async def test_without_the_second_factor_a_reset_yields_nothing(suite: Suite) -> None:
    email = _email()
    access = (await suite.sign_up_and_log_in(email))["accessToken"]
    _, enrolment, _ = await suite.json_call("POST", "/v1/me/totp", token=access)
    secret = enrolment["secret"]
    status, _, _ = await suite.json_call(
        "POST",
        "/v1/me/totp/confirm",
        token=access,
        json={"code": pyotp.TOTP(secret).at(suite.clock.now())},
    )
    assert status == 200
    suite.clock.advance(timedelta(seconds=30))

    token = _token_of(await _emailed_link(suite, email))
    for _ in range(2):  # asked again: still nothing used up
        status, headers, body = await _confirm(suite, token)
        assert status == 200
        assert headers["Cache-Control"] == "no-store"
        assert body == b'{"mfaRequired":true,"methods":["totp","backup_code"]}'
    assert (await suite.call("GET", "/v1/me", token=access))[0] == 200  # session untouched
    status, login, _ = await _login(suite, email, PASSWORD)  # the old password still works
    assert status == 200
    assert login["mfaRequired"] is True

    status, problem, _ = await suite.json_call(
        "POST",
        "/v1/auth/password-reset/confirm",
        json={"token": token, "newPassword": NEW, "code": "000000"},
    )
    assert (status, problem["code"]) == (401, "invalid_mfa_code")

    code = pyotp.TOTP(secret).at(suite.clock.now())
    status, _, body = await _confirm(suite, token, code=code)
    assert (status, body) == (204, b"")
    await _evicted(suite)
    assert (await suite.call("GET", "/v1/me", token=access))[0] == 401
    status, login, _ = await _login(suite, email, NEW)
    assert status == 200
    assert login["mfaRequired"] is True  # a reset never turns the second factor off
    assert "accessToken" not in login


async def test_bad_input_gets_stable_codes(suite: Suite) -> None:
    email = _email()
    await suite.sign_up_and_log_in(email)
    token = _token_of(await _emailed_link(suite, email))
    magic = "plsd_ml_" + token[len("plsd_pr_") :]
    for bad, expected in (
        (token[:-3], "invalid_token"),
        (magic, "wrong_token_type"),
        ("plsd_pr_" + "A" * 43, "invalid_reset_token"),
    ):
        status, problem, _ = await suite.json_call(
            "POST", "/v1/auth/password-reset/confirm", json={"token": bad, "newPassword": NEW}
        )
        assert (status, problem["code"]) == (401, expected), bad
    status, problem, _ = await suite.json_call(
        "POST", "/v1/auth/password-reset/confirm", json={"token": token, "newPassword": "password"}
    )
    assert (status, problem["code"]) == (400, "password_too_common")
    assert (await _login(suite, email, PASSWORD))[0] == 200  # nothing changed
    assert (await _confirm(suite, token))[0] == 204  # and nothing was used up


async def test_requests_are_limited_per_email_silently_and_per_client_with_429(
    suite: Suite,
) -> None:
    email = _email()
    await suite.sign_up_and_log_in(email)  # its client is now exempt from the email cap only
    answers = [await _request(suite, email) for _ in range(4)]
    # Over the per-(email, client) limit (3): the same answer, and no fourth email.
    assert {(status, body) for status, _, body in answers} == {(202, b"{}")}
    await _mails(suite, email, RESET_SUBJECT, 3)
    await asyncio.sleep(0)
    assert len([m for m in suite.mail.to(email) if m["Subject"] == RESET_SUBJECT]) == 3

    # Per client (20 in 15 minutes, whatever the emails; this client has spent 4): a 429.
    for _ in range(16):
        assert (await _request(suite, _email()))[0] == 202
    status, headers, body = await _request(suite, _email())
    assert status == 429
    assert int(headers["Retry-After"]) > 0
    assert b'"rate_limited"' in body
    # A spoofed X-Forwarded-For changes nothing (no trusted proxy).
    assert (await _request(suite, _email(), ip="192.0.2.99"))[0] == 429
    suite.clock.advance(timedelta(minutes=15, seconds=1))
    assert (await _request(suite, _email()))[0] == 202
