"""Review: CounterLimiter checks, then (after slow work) hits. Parallel requests all pass the
check before any of them is counted, so every throttle built on it can be out-run."""

from __future__ import annotations

import asyncio
import uuid

import pyotp
import pytest

from .conftest import PASSWORD, Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

MFA_FAILURES = 10  # AuthSettings.mfa_failures default
MAGIC_LINKS_PER_EMAIL = 5  # AuthSettings.magic_link_email_requests default
ACCOUNT_IP_FAILURES = 10  # AuthSettings.throttle_account_ip_failures default


def _email() -> str:
    return f"race-{uuid.uuid4().hex[:10]}@example.com"


async def _enrolled(suite: Suite) -> tuple[str, str]:
    email = _email()
    access = (await suite.sign_up_and_log_in(email))["accessToken"]
    _, body, _ = await suite.json_call("POST", "/v1/me/totp", token=access)
    secret = body["secret"]
    status, _, _ = await suite.json_call(
        "POST",
        "/v1/me/totp/confirm",
        token=access,
        json={"code": pyotp.TOTP(secret).at(suite.clock.now())},
    )
    assert status == 200
    return email, secret


async def test_parallel_wrong_totp_guesses_exceed_the_per_user_limit(suite: Suite) -> None:
    """An attacker who has the password brute-forces the 6-digit code in parallel bursts."""
    email, secret = await _enrolled(suite)
    _, body, _ = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    mfa_token = body["mfaToken"]
    good = int(pyotp.TOTP(secret).at(suite.clock.now()))
    guesses = [f"{(good + 100 + i) % 1_000_000:06d}" for i in range(60)]
    results = await asyncio.gather(
        *(
            suite.json_call(
                "POST", "/v1/auth/login/mfa", json={"mfaToken": mfa_token, "code": guess}
            )
            for guess in guesses
        )
    )
    evaluated = [s for s, p, _ in results if s == 401 and p["code"] == "invalid_mfa_code"]
    assert len(evaluated) <= MFA_FAILURES, (
        f"{len(evaluated)} wrong codes were checked in one window (limit {MFA_FAILURES})"
    )


async def test_parallel_wrong_passwords_exceed_the_account_ip_limit(suite: Suite) -> None:
    """The same race in LoginThrottle: Argon2 runs between check and hit."""
    email = _email()
    await suite.sign_up_and_log_in(email)
    results = await asyncio.gather(
        *(
            suite.json_call(
                "POST", "/v1/auth/login", json={"email": email, "password": f"wrong-pass-{i}"}
            )
            for i in range(30)
        )
    )
    evaluated = [s for s, p, _ in results if s == 401 and p["code"] == "invalid_credentials"]
    assert len(evaluated) <= ACCOUNT_IP_FAILURES, (
        f"{len(evaluated)} passwords were checked from one IP (limit {ACCOUNT_IP_FAILURES})"
    )
