"""ChangePassword guesses count on the account's login throttle (issue 9 item 2)."""

from __future__ import annotations

import grpc
import pytest

from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
PASSWORD = "correct horse battery staple"
THROTTLE = {
    "throttle_ip_failures": 50,
    "throttle_account_ip_failures": 3,
    "throttle_account_failures": 100,
    "throttle_window_seconds": 600,
}


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("palisade-error-code")


async def _change(auth, me, current: str, new: str = "a brand new passphrase") -> str | None:
    try:
        await auth.stub.ChangePassword(
            pb.ChangePasswordRequest(current_password=current, new_password=new),
            metadata=auth.as_user(me),
        )
    except grpc.aio.AioRpcError as error:
        return _code(error)
    return None


async def test_a_stolen_session_cannot_guess_the_current_password_without_limit(
    auth_factory,
) -> None:
    async with auth_factory(**THROTTLE) as auth:
        await auth.sign_up("stolen@example.com")
        me = await auth.validate((await auth.login("stolen@example.com")).access_token)
        for i in range(3):
            assert await _change(auth, me, f"guess number {i}") == "invalid_credentials"
        # Counted before the hash: the next guess, and even the right password, wait.
        assert await _change(auth, me, f"guess number {3}") == "rate_limited"
        assert await _change(auth, me, PASSWORD) == "rate_limited"
        # The same counters as logins: the guesses also spent this IP's login attempts.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth.login("stolen@example.com")
        assert _code(caught.value) == "rate_limited"
        auth.clock.advance(601)
        assert await _change(auth, me, PASSWORD) is None
        await auth.login("stolen@example.com", "a brand new passphrase")
