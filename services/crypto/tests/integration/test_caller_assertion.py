"""Every RPC needs a valid signed caller assertion; health and reflection do not."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from palisade.common.caller import CALLER_METADATA_KEY, AssertionSigner
from palisade.common.edge_keys import KeyDocument, KeySource
from palisade.common.edges import EDGES
from palisade.common.grpc_client import insecure_channel
from palisade_api.crypto.v1 import crypto_pb2 as pb

pytestmark = pytest.mark.postgres

ENCRYPT = "/palisade.crypto.v1.CryptoService/Encrypt"
REQUEST = pb.EncryptRequest(items=[pb.EncryptItem(plaintext=b"x", associated_data=b"visitors/a")])


async def _status_of(crypto, metadata) -> grpc.StatusCode:
    try:
        await crypto.stub.Encrypt(REQUEST, metadata=metadata)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_valid_assertion_is_accepted(crypto) -> None:
    assert await _status_of(crypto, crypto.metadata()) == grpc.StatusCode.OK


async def test_missing_assertion_is_unauthenticated(crypto) -> None:
    assert await _status_of(crypto, ()) == grpc.StatusCode.UNAUTHENTICATED


async def test_spoofed_identity_metadata_is_ignored(crypto) -> None:
    spoofed = (
        ("x-palisade-principal", "service:auth"),
        ("x-user-id", "u_1"),
        (CALLER_METADATA_KEY, "service:auth"),
    )
    assert await _status_of(crypto, spoofed) == grpc.StatusCode.UNAUTHENTICATED


async def test_assertion_signed_with_another_key_is_refused(crypto) -> None:
    other = KeySource.from_master(KeyDocument.generate(), "auth")  # a key crypto never saw
    forger = AssertionSigner(keys=other, clock=crypto.clock, ttl_seconds=60)
    token = forger.sign(
        audience="crypto", method=ENCRYPT, principal="service:auth", request_id="r1"
    )
    assert await _status_of(crypto, ((CALLER_METADATA_KEY, token),)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


@pytest.mark.parametrize("part", [1, 2, 3, 4])
async def test_assertion_with_an_edited_part_is_refused(crypto, part) -> None:
    token = crypto.sign("Encrypt")
    pieces = token.split(".")
    pieces[part] = pieces[part][:-2] + ("AA" if not pieces[part].endswith("AA") else "BB")
    forged = ".".join(pieces)
    assert await _status_of(crypto, ((CALLER_METADATA_KEY, forged),)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_expired_assertion_is_refused(crypto) -> None:
    token = crypto.sign("Encrypt")
    crypto.clock.advance(61)  # the server's clock moves past the 60 s lifetime
    assert await _status_of(crypto, ((CALLER_METADATA_KEY, token),)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_assertion_for_another_service_is_refused(crypto) -> None:
    token = crypto.signer("gateway").sign(  # on the gateway->auth edge, sent to crypto
        audience="auth", method=ENCRYPT, principal="service:gateway", request_id="r"
    )
    assert await _status_of(crypto, ((CALLER_METADATA_KEY, token),)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_users_cannot_call_crypto_directly(crypto) -> None:
    # Even over a (test-only) gateway->crypto edge, where the gateway may speak for people.
    token = crypto.sign("Encrypt", "gateway", principal="user:u_1", workspace_id="ws_1")
    assert await _status_of(crypto, ((CALLER_METADATA_KEY, token),)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )


async def test_health_answers_without_assertion(crypto) -> None:
    async with insecure_channel(crypto.server.running.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        overall = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        named = await stub.Check(
            health_pb2.HealthCheckRequest(service="palisade.crypto.v1.CryptoService")
        )
    assert overall.status == named.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_services_without_assertion(crypto) -> None:
    async with insecure_channel(crypto.server.running.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"palisade.crypto.v1.CryptoService", "grpc.health.v1.Health"} <= names


async def _raw_call(crypto, body: bytes, metadata) -> grpc.aio.AioRpcError:
    async with crypto.signing.channel(crypto.server.running.target) as channel:
        call = channel.unary_unary("/palisade.crypto.v1.CryptoService/Encrypt")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(body, metadata=metadata)
    return caught.value


@pytest.mark.parametrize("body", [b"\xff\xfe\xfd garbage", b"\x0a\xff\xff\xff\xff\x0f"])
async def test_unparsable_bodies_are_refused_after_authentication(crypto, body) -> None:
    anonymous = await _raw_call(crypto, body, ())
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED  # the body is not looked at
    signed = await _raw_call(crypto, body, crypto.metadata())
    assert signed.code() == grpc.StatusCode.INVALID_ARGUMENT
    for error in (anonymous, signed):
        details = error.details() or ""
        assert "DecodeError" not in details
        assert "EncryptRequest" not in details
        assert "palisade.crypto" not in details


# -- per-edge trust (issue 9 item 13) ----------------------------------------------------------


async def test_a_service_holding_only_its_own_keys_cannot_call_as_the_gateway(crypto) -> None:
    """Auth, compromised, signs "as the gateway" with the only keys its file holds."""
    auth_file = crypto.master.for_service("auth")  # what auth's own key file holds
    # Exactly auth's own edges (whatever the list grows to), none that merely ends at crypto.
    assert set(auth_file.edges) == {e.name for e in EDGES if e.involves("auth")}
    assert "gateway:crypto" not in auth_file.edges
    auth_key = auth_file.edges["auth:crypto"].keys[0]
    claims = {"iss": "gateway", "sub": "user:u_1"}
    for header_issuer in ("gateway", "auth"):
        token = _hand_signed(crypto, header_issuer, auth_key.kid, auth_key.secret, **claims)
        assert await _status_of(crypto, ((CALLER_METADATA_KEY, token),)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )


async def test_a_service_cannot_assert_a_user_principal(crypto) -> None:
    for principal in ("user:u_1", "apikey:k_1", "anonymous", "service:gateway"):
        token = crypto.sign("Encrypt", "auth", principal=principal)
        assert await _status_of(crypto, ((CALLER_METADATA_KEY, token),)) == (
            grpc.StatusCode.UNAUTHENTICATED
        ), principal


async def test_a_captured_assertion_cannot_be_replayed(crypto) -> None:
    token = crypto.sign("Encrypt")
    metadata = ((CALLER_METADATA_KEY, token),)
    assert await _status_of(crypto, metadata) == grpc.StatusCode.OK
    assert await _status_of(crypto, metadata) == grpc.StatusCode.UNAUTHENTICATED


async def test_an_assertion_for_one_method_is_refused_on_another(crypto) -> None:
    token = crypto.sign("KeyStatus")
    assert await _status_of(crypto, ((CALLER_METADATA_KEY, token),)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    status = await crypto.stub.KeyStatus(  # where it was meant to go, it works
        pb.KeyStatusRequest(), metadata=((CALLER_METADATA_KEY, crypto.sign("KeyStatus")),)
    )
    assert status.data_keys


def _hand_signed(crypto, issuer, kid, secret, **change) -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(crypto.clock.timestamp())
    claims = {
        "iss": issuer,
        "aud": "crypto",
        "mth": ENCRYPT,
        "sub": f"service:{issuer}",
        "rid": "r",
        "jti": "forged-1",
        "iat": now,
        "exp": now + 60,
        **change,
    }
    signing_input = f"v2.{issuer}.{kid}.{b64(json.dumps(claims).encode())}"
    return (
        f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"
    )
