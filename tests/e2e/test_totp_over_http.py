"""TOTP and backup codes through the gateway (SECURITY.md 11-16, 27), on the injectable clock."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import timedelta

import pyotp
import pytest

from .conftest import PASSWORD, Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _email() -> str:
    return f"totp-{uuid.uuid4().hex[:10]}@example.com"


def _code(secret: str, suite: Suite, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(suite.clock.now() + timedelta(seconds=30 * steps))


async def _next_step(suite: Suite) -> None:
    """Moves to the start of a fresh 30 s step (the last code was used in the previous one)."""
    now = suite.clock.timestamp()
    suite.clock.advance(timedelta(seconds=30 - now % 30 + 1))


async def _enrolled(suite: Suite) -> tuple[str, str, list[str], str]:
    """A user with TOTP on: (email, secret, backup codes, access token)."""
    email = _email()
    tokens = await suite.sign_up_and_log_in(email)
    access = tokens["accessToken"]
    status, body, headers = await suite.json_call("POST", "/v1/me/totp", token=access)
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    secret = body["secret"]
    status, body, _ = await suite.json_call(
        "POST", "/v1/me/totp/confirm", token=access, json={"code": _code(secret, suite)}
    )
    assert status == 200, body
    return email, secret, body["backupCodes"], access


async def _mfa_token(suite: Suite, email: str) -> str:
    status, body, headers = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert status == 200, body
    assert body["mfaRequired"] is True
    assert "accessToken" not in body
    assert "refreshToken" not in body
    assert set(body["methods"]) == {"totp", "backup_code"}
    assert headers["Cache-Control"] == "no-store"
    return body["mfaToken"]


async def _complete(suite: Suite, mfa_token: str, **factor: str):
    return await suite.json_call(
        "POST", "/v1/auth/login/mfa", json={"mfaToken": mfa_token, **factor}
    )


async def test_enrolment_gives_an_authenticator_uri_and_ten_backup_codes(suite: Suite) -> None:
    email = _email()
    access = (await suite.sign_up_and_log_in(email))["accessToken"]
    status, me, _ = await suite.json_call("GET", "/v1/me", token=access)
    assert me["mfa"] == {"totp": False, "passkeys": 0}

    status, body, _ = await suite.json_call("POST", "/v1/me/totp", token=access)
    assert status == 200
    secret, uri = body["secret"], body["otpauthUri"]
    assert len(base64.b32decode(secret)) == 20
    parsed = pyotp.parse_uri(uri)
    assert parsed.secret == secret
    assert uri.startswith("otpauth://totp/Palisade:")
    assert parsed.name == email

    # Not on until a valid code confirms it: login still gives tokens.
    status, body, _ = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert "accessToken" in body

    wrong = f"{(int(_code(secret, suite)) + 1) % 1_000_000:06d}"
    status, problem, _ = await suite.json_call(
        "POST", "/v1/me/totp/confirm", token=access, json={"code": wrong}
    )
    assert (status, problem["code"]) == (401, "invalid_mfa_code")

    status, body, headers = await suite.json_call(
        "POST", "/v1/me/totp/confirm", token=access, json={"code": _code(secret, suite)}
    )
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    codes = body["backupCodes"]
    assert len(codes) == 10 == len(set(codes))

    _, me, _ = await suite.json_call("GET", "/v1/me", token=access)
    assert me["mfa"]["totp"] is True

    # A second enrolment while on is refused.
    status, problem, _ = await suite.json_call("POST", "/v1/me/totp", token=access)
    assert (status, problem["code"]) == (409, "totp_already_enabled")

    # Neither the secret nor any backup code is stored in plaintext.
    dump = suite.auth_database_dump()
    assert secret.encode() not in dump
    assert base64.b32decode(secret) not in dump
    for code in codes:
        assert code.encode() not in dump
        assert code.replace("-", "").encode() not in dump


async def test_password_login_needs_the_second_factor(suite: Suite) -> None:
    email, secret, _, _ = await _enrolled(suite)
    await _next_step(suite)
    mfa_token = await _mfa_token(suite, email)
    status, tokens, headers = await _complete(suite, mfa_token, code=_code(secret, suite))
    assert status == 200, tokens
    assert headers["Cache-Control"] == "no-store"
    status, me, _ = await suite.json_call("GET", "/v1/me", token=tokens["accessToken"])
    assert status == 200
    assert me["email"] == email

    # The mfaToken worked once.
    await _next_step(suite)
    status, problem, _ = await _complete(suite, mfa_token, code=_code(secret, suite))
    assert (status, problem["code"]) == (401, "invalid_mfa_token")


async def test_an_mfa_token_expires_after_five_minutes(suite: Suite) -> None:
    email, secret, _, _ = await _enrolled(suite)
    mfa_token = await _mfa_token(suite, email)
    suite.clock.advance(timedelta(seconds=301))
    status, problem, _ = await _complete(suite, mfa_token, code=_code(secret, suite))
    assert (status, problem["code"]) == (401, "invalid_mfa_token")


@pytest.mark.parametrize("factor", [{}, {"code": "123456", "backupCode": "abcde-fghjk"}])
async def test_exactly_one_factor_must_be_sent(suite: Suite, factor: dict[str, str]) -> None:
    email, _, _, _ = await _enrolled(suite)
    mfa_token = await _mfa_token(suite, email)
    status, problem, _ = await _complete(suite, mfa_token, **factor)
    assert (status, problem["code"]) == (400, "invalid_mfa_input")


async def test_one_step_of_drift_either_way_and_no_more(suite: Suite) -> None:
    email, secret, _, _ = await _enrolled(suite)
    suite.clock.advance(timedelta(minutes=5))  # well past the step used to confirm
    # T-2 and T+2 fail; then T-1 and T+1 (later than T-1) both pass.
    for steps, accepted in ((-2, False), (2, False), (-1, True), (1, True)):
        mfa_token = await _mfa_token(suite, email)
        status, _, _ = await _complete(suite, mfa_token, code=_code(secret, suite, steps))
        assert (status == 200) is accepted, steps


async def test_a_code_is_accepted_once_and_earlier_steps_die_with_it(suite: Suite) -> None:
    email, secret, _, _ = await _enrolled(suite)
    suite.clock.advance(timedelta(minutes=5))
    current, previous = _code(secret, suite), _code(secret, suite, -1)
    assert (await _complete(suite, await _mfa_token(suite, email), code=current))[0] == 200
    for code in {current, previous}:
        status, problem, _ = await _complete(suite, await _mfa_token(suite, email), code=code)
        assert (status, problem["code"]) == (401, "invalid_mfa_code")


async def test_twenty_parallel_submissions_of_one_code_give_one_session(suite: Suite) -> None:
    email, secret, _, _ = await _enrolled(suite)
    await _next_step(suite)
    mfa_tokens = [await _mfa_token(suite, email) for _ in range(20)]
    code = _code(secret, suite)
    results = await asyncio.gather(*(_complete(suite, t, code=code) for t in mfa_tokens))
    statuses = [status for status, _, _ in results]
    # The losers count as wrong codes, so the last of them may already meet the throttle.
    assert statuses.count(200) == 1, statuses
    assert set(statuses) - {200} <= {401, 429}, statuses


async def test_twenty_parallel_uses_of_one_mfa_token_give_one_session(suite: Suite) -> None:
    email, _secret, codes, _ = await _enrolled(suite)
    mfa_token = await _mfa_token(suite, email)
    # Different valid backup codes, one mfaToken: the token is the single-use secret here.
    results = await asyncio.gather(
        *(_complete(suite, mfa_token, backupCode=codes[i % 10]) for i in range(20))
    )
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) == 1, statuses
    assert set(statuses) - {200} <= {401, 429}, statuses


async def test_twenty_parallel_uses_of_one_backup_code_give_one_session(suite: Suite) -> None:
    email, _, codes, _ = await _enrolled(suite)
    mfa_tokens = [await _mfa_token(suite, email) for _ in range(20)]
    results = await asyncio.gather(*(_complete(suite, t, backupCode=codes[0]) for t in mfa_tokens))
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) == 1, statuses
    assert set(statuses) - {200} <= {401, 429}, statuses
    suite.clock.advance(timedelta(seconds=901))  # let the losers' count decay

    # Used up for good; the others still work, typed loosely.
    status, _, _ = await _complete(suite, await _mfa_token(suite, email), backupCode=codes[0])
    assert status == 401
    loosely = codes[1].replace("-", "").upper()
    status, _, _ = await _complete(suite, await _mfa_token(suite, email), backupCode=loosely)
    assert status == 200


async def test_regenerating_backup_codes_kills_the_old_set(suite: Suite) -> None:
    email, _, old_codes, access = await _enrolled(suite)
    status, body, headers = await suite.json_call("POST", "/v1/me/backup-codes", token=access)
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    new_codes = body["backupCodes"]
    assert len(new_codes) == 10
    assert set(new_codes).isdisjoint(old_codes)
    status, _, _ = await _complete(suite, await _mfa_token(suite, email), backupCode=old_codes[0])
    assert status == 401
    status, _, _ = await _complete(suite, await _mfa_token(suite, email), backupCode=new_codes[0])
    assert status == 200


async def test_wrong_codes_are_throttled_and_a_new_password_login_does_not_reset(
    suite: Suite,
) -> None:
    email, secret, codes, _ = await _enrolled(suite)
    await _next_step(suite)
    good = _code(secret, suite)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    mfa_token = await _mfa_token(suite, email)
    for _ in range(10):
        status, problem, _ = await _complete(suite, mfa_token, code=wrong)
        assert (status, problem["code"]) == (401, "invalid_mfa_code")
    status, problem, headers = await _complete(suite, mfa_token, code=good)
    assert (status, problem["code"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) > 0

    # Re-entering the password gives a new mfaToken, not a new count.
    status, problem, _ = await _complete(suite, await _mfa_token(suite, email), code=good)
    assert status == 429
    status, _, _ = await _complete(suite, await _mfa_token(suite, email), backupCode=codes[0])
    assert status == 429

    # The count decays with time (the injectable clock, not a sleep).
    suite.clock.advance(timedelta(seconds=901))
    status, _, _ = await _complete(suite, await _mfa_token(suite, email), backupCode=codes[0])
    assert status == 200


async def test_disabling_needs_a_recent_login(suite: Suite) -> None:
    email, secret, _, access = await _enrolled(suite)
    suite.clock.advance(timedelta(minutes=11))
    for method, path in (("DELETE", "/v1/me/totp"), ("POST", "/v1/me/backup-codes")):
        status, problem, _ = await suite.json_call(method, path, token=access)
        assert (status, problem["code"]) == (403, "recent_auth_required"), path

    await _next_step(suite)
    mfa_token = await _mfa_token(suite, email)
    status, fresh, _ = await _complete(suite, mfa_token, code=_code(secret, suite))
    assert status == 200
    status, _, _ = await suite.json_call("DELETE", "/v1/me/totp", token=fresh["accessToken"])
    assert status == 204
    status, body, _ = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert status == 200
    assert "accessToken" in body
    assert not body.get("mfaRequired")
    _, me, _ = await suite.json_call("GET", "/v1/me", token=body["accessToken"])
    assert me["mfa"]["totp"] is False
