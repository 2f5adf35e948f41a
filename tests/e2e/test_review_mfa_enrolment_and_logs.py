"""Review: enrolment races, odd input, and secrets in logs (TOTP, backup codes, magic links)."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from datetime import timedelta

import pyotp
import pytest

from .conftest import PASSWORD, Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

_LINK = re.compile(r"https?://\S+/auth/magic-link\?token=([A-Za-z0-9_%-]+)")


def _email() -> str:
    return f"rev-{uuid.uuid4().hex[:10]}@example.com"


async def test_parallel_enrolment_starts_never_give_a_5xx(suite: Suite) -> None:
    access = (await suite.sign_up_and_log_in(_email()))["accessToken"]
    results = await asyncio.gather(
        *(suite.json_call("POST", "/v1/me/totp", token=access) for _ in range(10))
    )
    statuses = [s for s, _, _ in results]
    assert all(s < 500 for s in statuses), statuses
    # A pending enrolment is not "already enabled": every start should just replace it.
    assert all(s == 200 for s in statuses), [(s, b and b.get("code")) for s, b, _ in results]


async def test_parallel_confirms_turn_totp_on_once_with_one_set_of_codes(suite: Suite) -> None:
    access = (await suite.sign_up_and_log_in(_email()))["accessToken"]
    _, body, _ = await suite.json_call("POST", "/v1/me/totp", token=access)
    code = pyotp.TOTP(body["secret"]).at(suite.clock.now())
    results = await asyncio.gather(
        *(
            suite.json_call("POST", "/v1/me/totp/confirm", token=access, json={"code": code})
            for _ in range(10)
        )
    )
    statuses = [s for s, _, _ in results]
    assert statuses.count(200) == 1, statuses
    assert all(s < 500 for s in statuses), statuses


async def test_the_confirming_code_cannot_be_reused_to_log_in(suite: Suite) -> None:
    email = _email()
    access = (await suite.sign_up_and_log_in(email))["accessToken"]
    _, body, _ = await suite.json_call("POST", "/v1/me/totp", token=access)
    code = pyotp.TOTP(body["secret"]).at(suite.clock.now())
    status, _, _ = await suite.json_call(
        "POST", "/v1/me/totp/confirm", token=access, json={"code": code}
    )
    assert status == 200
    _, login, _ = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    status, problem, _ = await suite.json_call(
        "POST", "/v1/auth/login/mfa", json={"mfaToken": login["mfaToken"], "code": code}
    )
    assert (status, problem["code"]) == (401, "invalid_mfa_code")


@pytest.mark.parametrize(
    "factor",
    [
        {"code": "1" * 10_000},
        {"code": "١٢٣٤٥٦"},  # Arabic-Indic digits
        {"code": "12345\x00"},
        {"code": "１２３４５６"},  # fullwidth
        {"backupCode": "x" * 10_000},
        {"backupCode": "\x00" * 11},
        {"backupCode": "ＡＢＣＤＥ-ＦＧＨＪＫ"},
    ],
)
async def test_odd_codes_are_a_plain_401(suite: Suite, factor: dict[str, str]) -> None:
    email = _email()
    access = (await suite.sign_up_and_log_in(email))["accessToken"]
    _, body, _ = await suite.json_call("POST", "/v1/me/totp", token=access)
    code = pyotp.TOTP(body["secret"]).at(suite.clock.now())
    await suite.json_call("POST", "/v1/me/totp/confirm", token=access, json={"code": code})
    _, login, _ = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    status, problem, _ = await suite.json_call(
        "POST", "/v1/auth/login/mfa", json={"mfaToken": login["mfaToken"], **factor}
    )
    assert status in (400, 401, 413), (status, problem)


async def test_no_secret_reaches_the_logs(suite: Suite, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    email = _email()
    access = (await suite.sign_up_and_log_in(email))["accessToken"]
    _, body, _ = await suite.json_call("POST", "/v1/me/totp", token=access)
    secret = body["secret"]
    totp = pyotp.TOTP(secret)
    code = totp.at(suite.clock.now())
    _, codes, _ = await suite.json_call(
        "POST", "/v1/me/totp/confirm", token=access, json={"code": code}
    )
    backup = codes["backupCodes"]
    await suite.call("POST", "/v1/auth/magic-links", json={"email": email})
    message = await suite.mail.wait_for(email, subject="Your Palisade sign-in link")
    [link_token] = _LINK.findall(message.get_body(preferencelist=("plain",)).get_content())
    _, redeemed, _ = await suite.json_call(
        "POST", "/v1/auth/magic-links/redeem", json={"token": link_token}
    )
    suite.clock.advance(timedelta(seconds=31))
    await suite.json_call(
        "POST",
        "/v1/auth/login/mfa",
        json={"mfaToken": redeemed["mfaToken"], "backupCode": backup[0]},
    )
    _, login, _ = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    _, tokens, _ = await suite.json_call(
        "POST",
        "/v1/auth/login/mfa",
        json={"mfaToken": login["mfaToken"], "code": totp.at(suite.clock.now())},
    )
    secrets_ = [secret, code, *backup, link_token, redeemed["mfaToken"], login["mfaToken"]]
    secrets_ += [tokens["accessToken"], tokens["refreshToken"], email, PASSWORD]
    for record in caplog.records:
        if record.name == "mail.log":  # aiosmtpd: the test's own SMTP catcher
            continue
        text = record.getMessage() + " " + repr(record.__dict__)
        for value in secrets_:
            assert value not in text, (record.name, value)
