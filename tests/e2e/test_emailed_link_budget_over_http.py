"""Redeeming an emailed link spends the client network's lookup budget at the gateway, as a
leak report or a made-up API key does: one client guessing verification or sign-in tokens is
answered 429 (with Retry-After) once the burst is spent, before auth looks anything up."""

from __future__ import annotations

import secrets

import pytest

from .conftest import Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
LOOKUP_BURST = 100  # the gateway's default client_lookup_limit_burst


def _guess(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)  # well-formed, never issued


@pytest.mark.parametrize(
    ("path", "prefix", "refused"),
    [
        ("/v1/auth/email-verification/confirm", "plsd_ev_", 400),  # invalid_verification_link
        ("/v1/auth/magic-links/redeem", "plsd_ml_", 401),  # invalid_magic_link
    ],
)
async def test_guessing_emailed_tokens_is_limited_per_client(
    suite: Suite, path: str, prefix: str, refused: int
) -> None:
    statuses = []
    retry_after = None
    for _ in range(LOOKUP_BURST + 10):
        status, headers, _ = await suite.call("POST", path, json={"token": _guess(prefix)})
        statuses.append(status)
        if status == 429:
            retry_after = headers.get("Retry-After")
    assert 429 not in statuses[:LOOKUP_BURST]
    assert set(statuses[:LOOKUP_BURST]) == {refused}  # each guess looked up, and refused
    assert set(statuses[LOOKUP_BURST:]) == {429}
    assert retry_after is not None
    assert int(retry_after) >= 1
