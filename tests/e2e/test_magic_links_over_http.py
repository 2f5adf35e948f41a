"""Magic links end to end: the email arrives at a real SMTP server and the test follows the link
over HTTP (SECURITY.md 8, 16-18)."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta
from email.message import EmailMessage
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest

from .conftest import Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

_LINK = re.compile(r"https?://\S+/auth/magic-link\?token=[A-Za-z0-9_%-]+")


def _email() -> str:
    return f"link-{uuid.uuid4().hex[:10]}@example.com"


def _link_in(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    [link] = _LINK.findall(body.get_content())
    return link


def _token_of(link: str) -> str:
    [token] = parse_qs(urlparse(link).query)["token"]
    return token


async def _request(suite: Suite, email: str):
    return await suite.call("POST", "/v1/auth/magic-links", json={"email": email})


async def _emailed_link(suite: Suite, email: str) -> str:
    status, _, _ = await _request(suite, email)
    assert status == 202
    # Sign-up sent its verification email first: the sign-in link is the one with its subject.
    return _link_in(await suite.mail.wait_for(email, subject="Your Palisade sign-in link"))


async def _redeem(suite: Suite, token: str):
    return await suite.json_call("POST", "/v1/auth/magic-links/redeem", json={"token": token})


async def test_the_emailed_link_signs_in_after_the_confirm_step(suite: Suite) -> None:
    email = _email()
    await suite.sign_up_and_log_in(email)
    link = await _emailed_link(suite, email)
    token = _token_of(link)
    assert token.startswith("plsd_ml_")
    assert link.startswith("http://localhost:8080/auth/magic-link?token=")

    # Follow it on this gateway: the GET shows a confirm page and consumes nothing, however
    # often a link scanner fetches it.
    path = urlparse(link).path + "?" + urlparse(link).query
    for _ in range(3):
        status, headers, page = await suite.call("GET", path)
        assert status == 200
        assert headers["Content-Type"].startswith("text/html")
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-store"
        assert token.encode() not in page  # the page reads it from the URL, never echoes it
        assert b"/v1/auth/magic-links/redeem" in page

    status, tokens, headers = await _redeem(suite, token)
    assert status == 200, tokens
    assert headers["Cache-Control"] == "no-store"
    status, me, _ = await suite.json_call("GET", "/v1/me", token=tokens["accessToken"])
    assert status == 200
    assert me["email"] == email

    status, problem, _ = await _redeem(suite, token)
    assert (status, problem["code"]) == (401, "invalid_magic_link")


async def test_known_and_unknown_emails_get_the_same_answer(suite: Suite) -> None:
    known = _email()
    await suite.sign_up_and_log_in(known)
    unknown = _email()
    answers = [await _request(suite, email) for email in (known, unknown)]
    (s1, h1, b1), (s2, h2, b2) = answers
    assert (s1, b1) == (s2, b2)
    assert s1 == 202
    assert h1.get("Content-Type") == h2.get("Content-Type")
    await suite.mail.wait_for(known)
    await asyncio.sleep(0)  # let any (wrong) delivery to the unknown address happen first
    assert suite.mail.to(unknown) == []


async def test_twenty_parallel_redemptions_give_one_session(suite: Suite) -> None:
    email = _email()
    await suite.sign_up_and_log_in(email)
    token = _token_of(await _emailed_link(suite, email))
    results = await asyncio.gather(*(_redeem(suite, token) for _ in range(20)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] + [401] * 19, statuses


async def test_a_link_dies_after_fifteen_minutes(suite: Suite) -> None:
    email = _email()
    await suite.sign_up_and_log_in(email)
    token = _token_of(await _emailed_link(suite, email))
    suite.clock.advance(timedelta(minutes=15, seconds=1))
    status, problem, _ = await _redeem(suite, token)
    assert (status, problem["code"]) == (401, "invalid_magic_link")


async def test_a_link_just_inside_fifteen_minutes_works(suite: Suite) -> None:
    email = _email()
    await suite.sign_up_and_log_in(email)
    token = _token_of(await _emailed_link(suite, email))
    suite.clock.advance(timedelta(minutes=14, seconds=59))
    status, _, _ = await _redeem(suite, token)
    assert status == 200


async def test_the_token_is_stored_hashed_and_the_email_encrypted(suite: Suite) -> None:
    email = _email()
    await suite.sign_up_and_log_in(email)
    token = _token_of(await _emailed_link(suite, email))
    dump = suite.auth_database_dump()
    assert token.encode() not in dump
    assert token[len("plsd_ml_") :].encode() not in dump
    assert email.encode() not in dump


@pytest.mark.parametrize("token", ["", "nope", "plsd_ml_" + "A" * 43, "plsd_rt_" + "A" * 43])
async def test_unknown_or_malformed_tokens_are_refused(suite: Suite, token: str) -> None:
    status, problem, _ = await _redeem(suite, token)
    assert (status, problem["code"]) == (401, "invalid_magic_link")


async def test_requests_are_rate_limited_per_email(suite: Suite) -> None:
    email = _email()  # unknown or not, it counts the same
    for _ in range(5):
        assert (await _request(suite, email))[0] == 202
    status, headers, body = await _request(suite, email)
    assert status == 429
    assert int(headers["Retry-After"]) > 0
    assert b"rate_limited" in body
    suite.clock.advance(timedelta(minutes=15, seconds=1))
    assert (await _request(suite, email))[0] == 202


async def test_requests_are_rate_limited_per_ip(suite: Suite) -> None:
    for _ in range(20):
        assert (await _request(suite, _email()))[0] == 202
    status, headers, _ = await _request(suite, _email())
    assert status == 429
    assert "Retry-After" in headers


async def test_a_magic_link_does_not_bypass_the_second_factor(suite: Suite) -> None:
    email = _email()
    access = (await suite.sign_up_and_log_in(email))["accessToken"]
    _, enrolment, _ = await suite.json_call("POST", "/v1/me/totp", token=access)
    secret = enrolment["secret"]
    code = pyotp.TOTP(secret).at(suite.clock.now())
    status, _, _ = await suite.json_call(
        "POST", "/v1/me/totp/confirm", token=access, json={"code": code}
    )
    assert status == 200

    token = _token_of(await _emailed_link(suite, email))
    status, body, _ = await _redeem(suite, token)
    assert status == 200
    assert body["mfaRequired"] is True
    assert "accessToken" not in body
    suite.clock.advance(timedelta(seconds=30))
    status, tokens, _ = await suite.json_call(
        "POST",
        "/v1/auth/login/mfa",
        json={"mfaToken": body["mfaToken"], "code": pyotp.TOTP(secret).at(suite.clock.now())},
    )
    assert status == 200
    assert "accessToken" in tokens
