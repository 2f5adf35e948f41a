"""What an account may not do before its address is verified (accounts/restrictions.py):
ValidateAccessToken hands the gateway the list (empty once verified), and auth itself refuses
TOTP enrolment to an unverified account, whoever calls (the gateway refuses it first)."""

from __future__ import annotations

import grpc
import pytest

from palisade.auth.mfa import totp
from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

DEFAULT = ["create_api_keys", "enrol_second_factor", "invite_members"]


async def _signed_in(auth, email: str, *, verified: bool):
    await auth.sign_up(email, verified=verified)
    return await auth.validate((await auth.login(email)).access_token)


async def _refused(call) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), dict(caught.value.trailing_metadata() or ()).get(
        "palisade-error-code"
    )


async def test_an_unverified_account_gets_the_default_restrictions(auth) -> None:
    grant = await _signed_in(auth, "new@example.com", verified=False)
    assert list(grant.restrictions) == DEFAULT


async def test_a_verified_account_has_none(auth) -> None:
    grant = await _signed_in(auth, "proven@example.com", verified=True)
    assert list(grant.restrictions) == []


async def test_the_session_after_the_proof_is_unrestricted(auth) -> None:
    signed_up = await auth.sign_up("later@example.com", verified=False)
    before = await auth.validate((await auth.login("later@example.com")).access_token)
    await auth.verify_email(signed_up.user_id)
    after = await auth.validate((await auth.login("later@example.com")).access_token)
    assert (list(before.restrictions), list(after.restrictions)) == (DEFAULT, [])


async def test_the_setting_decides_and_second_factors_stay_restricted(auth_factory) -> None:
    async with auth_factory(unverified_restrictions=()) as auth:
        grant = await _signed_in(auth, "open@example.com", verified=False)
        assert list(grant.restrictions) == ["enrol_second_factor"]
    async with auth_factory(unverified_restrictions=("invite_members",)) as auth:
        grant = await _signed_in(auth, "invites@example.com", verified=False)
        assert list(grant.restrictions) == ["enrol_second_factor", "invite_members"]


async def test_auth_refuses_totp_enrolment_to_an_unverified_account(auth) -> None:
    grant = await _signed_in(auth, "totp@example.com", verified=False)
    refused = await _refused(
        auth.stub.StartTotpEnrollment(pb.StartTotpEnrollmentRequest(), metadata=auth.as_user(grant))
    )
    assert refused == (grpc.StatusCode.PERMISSION_DENIED, "email_not_verified")
    assert auth.events("mfa.totp_enrollment_started") == []
    with auth.db() as conn:
        assert conn.execute("SELECT count(*) FROM totp_credentials").fetchone()[0] == 0


async def test_an_enrolment_pending_while_unverified_cannot_be_confirmed(auth) -> None:
    """Defence in depth: an enrolment started before this rule (or before the address stopped
    counting as proven) never completes while the address is unverified."""
    signed_up = await auth.sign_up("pending@example.com")
    grant = await auth.validate((await auth.login("pending@example.com")).access_token)
    started = await auth.stub.StartTotpEnrollment(
        pb.StartTotpEnrollmentRequest(), metadata=auth.as_user(grant)
    )
    with auth.db() as conn:
        conn.execute(
            "UPDATE users SET email_verified_at = NULL WHERE id = %s", (signed_up.user_id,)
        )
    code = totp.code_for_step(started.secret, totp.step_at(auth.clock.timestamp()))
    refused = await _refused(
        auth.stub.ConfirmTotp(pb.ConfirmTotpRequest(code=code), metadata=auth.as_user(grant))
    )
    assert refused == (grpc.StatusCode.PERMISSION_DENIED, "email_not_verified")
    assert auth.events("mfa.totp_enabled") == []
    await auth.verify_email(signed_up.user_id)
    codes = await auth.stub.ConfirmTotp(
        pb.ConfirmTotpRequest(code=code), metadata=auth.as_user(grant)
    )
    assert len(codes.backup_codes) == 10


async def test_auth_refuses_passkey_options_to_an_unverified_account(auth) -> None:
    grant = await _signed_in(auth, "passkey@example.com", verified=False)
    refused = await _refused(
        auth.stub.PasskeyRegistrationOptions(
            pb.PasskeyRegistrationOptionsRequest(), metadata=auth.as_user(grant)
        )
    )
    assert refused == (grpc.StatusCode.PERMISSION_DENIED, "email_not_verified")
    with auth.db() as conn:
        assert conn.execute("SELECT count(*) FROM webauthn_challenges").fetchone()[0] == 0
