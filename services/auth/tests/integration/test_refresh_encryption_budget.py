"""Refresh encrypts a successor only when it actually rotates (issue 9 item 9).

An unauthenticated caller with a made-up, dead or already rotated refresh token must not make
auth spend the crypto service's encryption budget.
"""

from __future__ import annotations

import grpc
import pytest

from palisade.auth.sessions.tokens import TokenKind, new_token
from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("palisade-error-code")


@pytest.fixture
def encryptions(auth, monkeypatch) -> list[int]:
    """How many values each encrypt call of the sessions' crypto client carried."""
    crypto = auth.servers[0].sessions._crypto
    calls: list[int] = []
    original = crypto.encrypt

    async def spy(items, *args, **kwargs):
        calls.append(len(items))
        return await original(items, *args, **kwargs)

    monkeypatch.setattr(crypto, "encrypt", spy)
    return calls


async def _refused(auth, token: str) -> str | None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.refresh(token)
    return _code(caught.value)


async def test_unknown_and_dead_tokens_cost_no_encryption(auth, encryptions) -> None:
    await auth.sign_up("budget@example.com")
    encryptions.clear()  # the crypto client is shared: count only what refresh does
    for _ in range(5):
        assert await _refused(auth, new_token(TokenKind.REFRESH)) == "invalid_token"
    assert encryptions == []

    # A revoked session's token.
    tokens = await auth.login("budget@example.com")
    grant = await auth.validate(tokens.access_token)
    await auth.stub.Logout(pb.LogoutRequest(), metadata=auth.as_user(grant))
    encryptions.clear()
    assert await _refused(auth, tokens.refresh_token) == "session_revoked"
    assert encryptions == []

    # An expired one.
    tokens = await auth.login("budget@example.com")
    encryptions.clear()
    auth.clock.advance(auth.settings.refresh_token_seconds + 1)
    assert await _refused(auth, tokens.refresh_token) == "token_expired"
    assert encryptions == []


async def test_only_a_real_rotation_encrypts(auth, encryptions) -> None:
    await auth.sign_up("rotate@example.com")
    tokens = await auth.login("rotate@example.com")
    encryptions.clear()
    rotated = await auth.refresh(tokens.refresh_token)
    assert encryptions == [1]
    # Within grace: the stored successor again, decrypted, not a new encryption.
    again = await auth.refresh(tokens.refresh_token)
    assert again.refresh_token == rotated.refresh_token
    assert encryptions == [1]
    # After grace: a replay, which revokes the family; still no encryption.
    auth.clock.advance(auth.settings.refresh_grace_seconds + 1)
    assert await _refused(auth, tokens.refresh_token) == "token_reused"
    assert encryptions == [1]
