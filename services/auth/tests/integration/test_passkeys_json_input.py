"""Free JSON in passkey requests over gRPC: every failure is its 4xx (issue 9 item 4).

A google.protobuf.Struct can carry NaN and infinities over gRPC (the gateway refuses them in
HTTP bodies, but auth does not rely on that), and its values can be of any JSON type.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from palisade_api.auth.v1 import auth_pb2 as pb

BAD_VALUES = {
    "NaN": float("nan"),
    "Infinity": float("inf"),
    "-Infinity": float("-inf"),
    "huge": 1e308,
    "a list": ["x", 1.0],
    "an object": {"a": True},
    "null": None,
}


def _credential(value: object, where: str) -> Struct:
    body: dict[str, object] = {
        "id": "AAAA",
        "rawId": "AAAA",
        "type": "public-key",
        "response": {"clientDataJSON": "e30", "authenticatorData": "AAAA", "signature": "AAAA"},
    }
    if where == "top":
        body["rawId"] = value
    else:
        body["response"] = {**body["response"], "clientDataJSON": value}  # type: ignore[dict-item]
    struct = Struct()
    struct.update(body)
    return struct


@pytest.mark.parametrize("where", ["top", "nested"])
@pytest.mark.parametrize("value", BAD_VALUES.values(), ids=BAD_VALUES.keys())
async def test_passkey_login_with_free_json_is_invalid_argument(auth, value, where) -> None:
    options = await auth.stub.PasskeyLoginOptions(
        pb.PasskeyLoginOptionsRequest(), metadata=auth.anonymous()
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await auth.stub.PasskeyLogin(
            pb.PasskeyLoginRequest(
                challenge_id=options.challenge_id, credential=_credential(value, where)
            ),
            metadata=auth.anonymous(),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["NaN", "Infinity"])
async def test_passkey_registration_with_non_finite_numbers_is_invalid_argument(
    auth, value
) -> None:
    await auth.sign_up("json@example.com")
    tokens = await auth.login("json@example.com")
    grant = await auth.validate(tokens.access_token)
    options = await auth.stub.PasskeyRegistrationOptions(
        pb.PasskeyRegistrationOptionsRequest(), metadata=auth.as_user(grant)
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await auth.stub.RegisterPasskey(
            pb.RegisterPasskeyRequest(
                challenge_id=options.challenge_id, credential=_credential(value, "nested")
            ),
            metadata=auth.as_user(grant),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
