"""Disabling an account, seen from the outside (SECURITY.md 26, 45): once an operator runs
`palisade-auth users disable`, the person's access token and their API key stop working
through the gateway, every way in answers 403 account_disabled after the right credentials,
and `users enable` lets them back in (with new tokens and new keys).

The operator's command runs in this process (the CLI's own code, run_users_command) against
the suite's auth database; the running auth service's relays publish what it queued, so what
is measured is propagation between processes, in wall time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from palisade.auth.accounts.disabling_cli import run_users_command
from palisade.auth.config import AuthSettings

from .conftest import PASSWORD, Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def _users(suite: Suite, action: str, email: str) -> tuple[int, list[str]]:
    """`palisade-auth users ACTION EMAIL` with the suite's settings. Its assertions carry
    real time; the suite's ManualClock follows real time while it runs (never backwards)."""
    assert suite.data_dir is not None
    settings = AuthSettings(
        data_dir=suite.data_dir,
        database_url=suite.auth_database_url,
        crypto_target=suite.crypto_target,
    )
    lines: list[str] = []

    async def follow() -> None:
        while True:
            suite.clock.set(max(suite.clock.now(), datetime.now(UTC)))
            await asyncio.sleep(0.05)

    follower = asyncio.create_task(follow())
    try:
        status = await run_users_command(
            settings, action, email, out=lines.append, err=lines.append
        )
    finally:
        follower.cancel()
    return status, lines


async def _until(ask: Callable[[], Awaitable[int]], expected: int, *, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await ask() == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not {expected} within {within} s")


async def test_a_disabled_users_token_and_api_key_stop_working(suite: Suite) -> None:
    email = f"disabled-{uuid.uuid4().hex[:10]}@example.com"
    tokens = await suite.sign_up_and_log_in(email)
    access = tokens["accessToken"]
    status, created, _ = await suite.json_call(
        "POST",
        "/v1/api-keys",
        token=access,
        json={"name": "server", "type": "secret", "scopes": ["team:read"]},
    )
    assert status == 201, created
    key = created["key"]

    async def with_token() -> int:
        return (await suite.call("GET", "/v1/me", token=access))[0]

    async def with_key() -> int:
        return (await suite.call("GET", "/v1/whoami", token=key))[0]

    # Both work, and both are now in the gateway's caches.
    assert await with_token() == 200
    assert await with_key() == 200
    assert await with_key() == 200

    status, lines = await _users(suite, "disable", email)
    assert status == 0, lines

    # The running auth service publishes the ended sessions within a heartbeat and sends the
    # key revocation to apikeys within its poll; every gateway evicts from the feeds.
    await _until(with_token, 401, within=3.0)
    await _until(with_key, 401, within=5.0)
    status, problem, _ = await suite.json_call("GET", "/v1/me", token=access)
    assert (status, problem["code"]) == (401, "session_revoked")
    status, problem, _ = await suite.json_call("GET", "/v1/whoami", token=key)
    assert status == 401
    assert problem["code"] in {"invalid_api_key", "api_key_revoked"}

    # Every way in: after the right password, 403 account_disabled (problem+json).
    status, problem, headers = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert (status, problem["code"]) == (403, "account_disabled")
    assert headers["Content-Type"].startswith("application/problem+json")
    status, problem, _ = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": email, "password": "wrong " + PASSWORD}
    )
    assert (status, problem["code"]) == (401, "invalid_credentials")
    status, problem, _ = await suite.json_call(
        "POST", "/v1/auth/refresh", json={"refreshToken": tokens["refreshToken"]}
    )
    assert (status, problem["code"]) == (403, "account_disabled")

    # Enabled again: a new login works; the old token and key stay dead.
    status, lines = await _users(suite, "enable", email)
    assert status == 0, lines
    fresh = await suite.log_in(email)
    assert (await suite.call("GET", "/v1/me", token=fresh["accessToken"]))[0] == 200
    assert await with_token() == 401
    assert await with_key() == 401


async def test_an_unknown_address_changes_nothing(suite: Suite) -> None:
    status, lines = await _users(suite, "disable", "nobody@example.com")
    assert status == 1
    assert lines == ["palisade-auth users disable: no account has this email address"]
