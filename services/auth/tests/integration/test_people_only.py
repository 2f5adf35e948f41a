"""RPCs that act for a person refuse API keys and services (403 people_only), even though the
gateway already refuses keys on these routes: a service must not misbehave when one arrives
(e.g. an API key's assertion would otherwise pass for a user whose id is the key's)."""

from __future__ import annotations

import grpc
import pytest

from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

PERSON_RPCS = [
    ("GetMe", pb.GetMeRequest()),
    ("Logout", pb.LogoutRequest()),
    ("ListSessions", pb.ListSessionsRequest()),
    ("RevokeSession", pb.RevokeSessionRequest(id="ses_x")),
    ("RevokeAllSessions", pb.RevokeAllSessionsRequest()),
    ("ChangePassword", pb.ChangePasswordRequest(current_password="a" * 12, new_password="b" * 12)),
    ("StartTotpEnrollment", pb.StartTotpEnrollmentRequest()),
    ("ConfirmTotp", pb.ConfirmTotpRequest(code="123456")),
    ("DisableTotp", pb.DisableTotpRequest()),
    ("RegenerateBackupCodes", pb.RegenerateBackupCodesRequest()),
    ("PasskeyRegistrationOptions", pb.PasskeyRegistrationOptionsRequest()),
    ("ListPasskeys", pb.ListPasskeysRequest()),
    ("GetPasskey", pb.GetPasskeyRequest(id="pkey_x")),
    ("RenamePasskey", pb.RenamePasskeyRequest(id="pkey_x", name="x")),
    ("DeletePasskey", pb.DeletePasskeyRequest(id="pkey_x")),
]


async def _refused(call) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), dict(caught.value.trailing_metadata() or ()).get(
        "palisade-error-code"
    )


async def test_api_keys_and_services_are_refused_where_a_person_is_meant(auth) -> None:
    signed_up = await auth.sign_up("person@example.com")
    sessions_before = await auth.stub.ListSessions(
        pb.ListSessionsRequest(),
        metadata=auth.as_user(
            await auth.validate((await auth.login("person@example.com")).access_token)
        ),
    )
    callers = {
        # A key of the person's workspace, created by them, with every scope.
        "api key": lambda: auth.signing.marker(
            "gateway",
            principal=f"apikey:{signed_up.user_id}",
            workspace_id=signed_up.workspace_id,
            scopes=["team:read", "visitors:read", "webhooks:manage"],
            key_mode="live",
            acting_user_id=signed_up.user_id,
        ),
        "gateway": lambda: auth.signing.marker("gateway", workspace_id=signed_up.workspace_id),
        "apikeys": lambda: auth.signing.marker("apikeys", workspace_id=signed_up.workspace_id),
    }
    for name, caller in callers.items():
        for method, request in PERSON_RPCS:
            refused = await _refused(getattr(auth.stub, method)(request, metadata=caller()))
            assert refused == (grpc.StatusCode.PERMISSION_DENIED, "people_only"), (name, method)
    # Nothing happened to the person's account meanwhile.
    grant = await auth.validate((await auth.login("person@example.com")).access_token)
    after = await auth.stub.ListSessions(pb.ListSessionsRequest(), metadata=auth.as_user(grant))
    assert len(after.sessions) == len(sessions_before.sessions) + 1
    assert auth.events("session.revoked") == []


async def test_anonymous_callers_still_need_to_sign_in(auth) -> None:
    for method, request in PERSON_RPCS:
        refused = await _refused(getattr(auth.stub, method)(request, metadata=auth.anonymous()))
        assert refused == (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"), method
