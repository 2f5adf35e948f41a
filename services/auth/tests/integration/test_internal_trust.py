"""Per-edge internal trust as auth sees it (issue 9 item 13), on real gRPC servers.

A service holding only its own keys cannot call auth as the gateway; a captured assertion is
refused the second time and on any other method; an edge key rotates with overlap and, once
retired, stops verifying. Each refusal is UNAUTHENTICATED with code caller_assertion_invalid.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json

import grpc
import pytest

from palisade.common.caller import CALLER_METADATA_KEY
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.edges import EDGES
from palisade.common.keys_cli import main as palisade_keys
from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

AUTH = "/palisade.auth.v1.AuthService"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_signed(auth, issuer: str, kid: str, secret: bytes, **claims: object) -> str:
    now = int(auth.clock.timestamp())
    body = {
        "iss": "gateway",
        "aud": "auth",
        "mth": f"{AUTH}/ValidateAccessToken",
        "sub": "service:gateway",
        "rid": "r",
        "jti": f"forged-{issuer}-{kid}",
        "iat": now,
        "exp": now + 60,
        **claims,
    }
    signing_input = f"v2.{issuer}.{kid}.{_b64(json.dumps(body).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _signed(auth, method: str, issuer: str = "gateway", **claims) -> str:
    claims.setdefault("principal", f"service:{issuer}")
    claims.setdefault("request_id", "r")
    return auth.signer(issuer).sign(audience="auth", method=f"{AUTH}/{method}", **claims)


async def test_crypto_with_only_its_own_keys_cannot_call_auth_as_the_gateway(auth) -> None:
    # What a compromised crypto service has: its own file, with the edges into crypto.
    own = read_document(auth.settings.resolved_internal_keys_file("crypto"))
    # Exactly the edges crypto is on (whatever the list grows to): every one ends at crypto.
    assert set(own.edges) == {e.name for e in EDGES if e.involves("crypto")}
    assert all(name.endswith(":crypto") for name in own.edges)
    for edge in own.edges.values():
        key = edge.keys[0]
        for header_issuer in ("gateway", "crypto", "auth", "apikeys"):
            token = _hand_signed(auth, header_issuer, key.kid, key.secret)
            assert not await _assertion_accepted(auth, token)
    # And auth's own file holds no key it could use to pass for the gateway elsewhere.
    auth_keys = KeySource(
        service="auth", path=auth.settings.resolved_internal_keys_file("auth")
    ).current
    assert set(auth_keys.signing) == {e.audience for e in EDGES if e.issuer == "auth"}
    assert set(auth_keys.verifying) == {e.issuer for e in EDGES if e.audience == "auth"}
    assert "gateway" not in auth_keys.signing


async def test_the_gateway_is_believed(auth) -> None:
    # The positive control for the refusals around it.
    assert await _assertion_accepted(auth, _signed(auth, "ValidateAccessToken"))


async def test_a_captured_assertion_is_refused_when_replayed(auth) -> None:
    await auth.sign_up("replay@example.com")
    user = await auth.login("replay@example.com")
    token = _signed(auth, "ValidateAccessToken")
    request = pb.ValidateAccessTokenRequest(access_token=user.access_token)
    first = await auth.stub.ValidateAccessToken(request, metadata=((CALLER_METADATA_KEY, token),))
    assert first.user_id
    with pytest.raises(grpc.aio.AioRpcError) as replayed:
        await auth.stub.ValidateAccessToken(request, metadata=((CALLER_METADATA_KEY, token),))
    assert replayed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    trailers = dict(replayed.value.trailing_metadata() or ())
    assert trailers.get("palisade-error-code") == "caller_assertion_invalid"


async def test_an_assertion_is_refused_on_another_method(auth) -> None:
    token = _signed(auth, "Login", principal="anonymous", client_ip="203.0.113.7")
    assert not await _assertion_accepted(auth, token)


async def test_an_edge_key_rotates_with_overlap_then_retires(auth) -> None:
    keys_dir = auth.settings.data_dir / "keys"
    before = auth.master
    old_kid = before.edges["gateway:auth"].keys[0].kid
    old_token = _signed(auth, "ValidateAccessToken")

    assert palisade_keys(["--keys-dir", str(keys_dir), "rotate", "gateway:auth"]) == 0
    rotated = read_document(keys_dir / "edges.json")
    new_kid = rotated.edges["gateway:auth"].keys[-1].kid
    assert new_kid != old_kid
    auth.master = rotated  # the gateway (re)reads its file: it now signs with the new kid
    auth.clock.advance(5)  # the CLI dated the new key by the wall clock; the test's stands still
    new_token = _signed(auth, "ValidateAccessToken")
    assert new_token.split(".")[2] == new_kid
    # The running auth server picks the new kid up without a restart; the old one still works.
    assert await _assertion_accepted(auth, new_token)
    assert await _assertion_accepted(auth, old_token)

    assert palisade_keys(["--keys-dir", str(keys_dir), "retire", "gateway:auth", old_kid]) == 0
    auth.master = before  # a caller still holding the retired key
    # Services look for a changed key file about once a second: wait for that, no longer.
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        stale = _signed(auth, "ValidateAccessToken")
        assert stale.split(".")[2] == old_kid
        if not await _assertion_accepted(auth, stale):
            break
        assert asyncio.get_running_loop().time() < deadline, "the retired kid still verifies"
        await asyncio.sleep(0.1)
    auth.master = read_document(keys_dir / "edges.json")
    assert await _assertion_accepted(auth, _signed(auth, "ValidateAccessToken"))


async def _assertion_accepted(auth, token: str) -> bool:
    """Whether auth got past the caller assertion (the token itself is a made-up one)."""
    try:
        await auth.stub.ValidateAccessToken(
            pb.ValidateAccessTokenRequest(access_token="plsd_at_" + "x" * 43),
            metadata=((CALLER_METADATA_KEY, token),),
        )
    except grpc.aio.AioRpcError as error:
        trailers = dict(error.trailing_metadata() or ())
        refused = trailers.get("palisade-error-code") == "caller_assertion_invalid"
        if refused and error.code() != grpc.StatusCode.UNAUTHENTICATED:
            raise AssertionError(f"refused with {error.code()}, not UNAUTHENTICATED") from None
        return not refused
    return True
