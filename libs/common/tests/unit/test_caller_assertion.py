from __future__ import annotations

import base64
import json

import pytest

from palisade.common.caller import AssertionSigner, AssertionVerifier, Keyset, load_keyset
from palisade.common.clock import ManualClock
from palisade.common.errors import Unauthenticated


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def keyset():
    return Keyset.generate()


def _pair(keyset, clock, audience="crypto"):
    signer = AssertionSigner(keyset=keyset, issuer="gateway", clock=clock, ttl_seconds=60)
    verifier = AssertionVerifier(keyset=keyset, audience=audience, clock=clock)
    return signer, verifier


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_round_trip_carries_every_claim(keyset, clock) -> None:
    signer, verifier = _pair(keyset, clock)
    token = signer.sign(
        audience="crypto",
        principal="user:u1",
        request_id="req-1",
        workspace_id="ws1",
        scopes=["chats:read", "visitors:read"],
    )
    caller = verifier.verify(token)
    assert (caller.issuer, caller.audience, caller.principal) == ("gateway", "crypto", "user:u1")
    assert caller.workspace_id == "ws1"
    assert caller.scopes == ("chats:read", "visitors:read")
    assert caller.request_id == "req-1"
    assert caller.expires_at - caller.issued_at == 60
    assert not caller.is_service


def test_expiry_follows_the_clock(keyset, clock) -> None:
    signer, verifier = _pair(keyset, clock)
    token = signer.sign(audience="crypto", principal="service:auth", request_id="r")
    clock.advance(59.9)
    assert verifier.verify(token).is_service
    clock.advance(0.1)
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token)


def test_future_assertion_beyond_skew_is_refused(keyset, clock) -> None:
    signer, verifier = _pair(keyset, clock)
    token = signer.sign(audience="crypto", principal="service:auth", request_id="r")
    clock.advance(-6)
    with pytest.raises(Unauthenticated, match="not yet valid"):
        verifier.verify(token)


def test_wrong_audience_is_refused(keyset, clock) -> None:
    signer, _ = _pair(keyset, clock)
    verifier = AssertionVerifier(keyset=keyset, audience="auth", clock=clock)
    with pytest.raises(Unauthenticated, match="another service"):
        verifier.verify(signer.sign(audience="crypto", principal="service:x", request_id="r"))


@pytest.mark.parametrize("attempt", range(20))
def test_every_single_character_edit_is_refused(keyset, clock, attempt) -> None:
    # Run on many tokens: edits of a base64 segment's last character can hit its unused bits,
    # which a byte-level comparison would accept.
    signer, verifier = _pair(keyset, clock)
    token = signer.sign(audience="crypto", principal="user:u1", request_id=f"r{attempt}")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, char in enumerate(token):
        if char == ".":
            continue
        for replacement in alphabet.replace(char, "")[:: 7 if i < len(token) - 1 else 1]:
            edited = token[:i] + replacement + token[i + 1 :]
            with pytest.raises(Unauthenticated):
                verifier.verify(edited)


def _resign(keyset, claims) -> str:
    kid = keyset.active_kid
    import hashlib
    import hmac

    signing_input = f"v1.{kid}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(keyset.keys[kid], signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


@pytest.mark.parametrize(
    "change",
    [
        {"exp": 10**12},  # lifetime far beyond the cap
        {"iat": "0"},  # wrong types
        {"exp": True},
        {"sub": 5},
        {"scp": "chats:read"},
        {"aud": None},
    ],
)
def test_validly_signed_but_bad_claims_are_refused(keyset, clock, change) -> None:
    now = int(clock.timestamp())
    claims = {
        "iss": "gateway",
        "aud": "crypto",
        "sub": "user:u",
        "rid": "r",
        "iat": now,
        "exp": now + 60,
        **change,
    }
    _, verifier = _pair(keyset, clock)
    with pytest.raises(Unauthenticated):
        verifier.verify(_resign(keyset, claims))


@pytest.mark.parametrize(
    "token", [None, "", "v1", "v1.a.b", "v2.k.p.s", "v1.k.p.s.x", "x" * 5000, "v1.k.!!.??"]
)
def test_malformed_assertions_are_refused(keyset, clock, token) -> None:
    _, verifier = _pair(keyset, clock)
    with pytest.raises(Unauthenticated):
        verifier.verify(token)


def test_rotated_keyset_still_verifies_old_kid(clock) -> None:
    old = Keyset.generate()
    signer, _ = _pair(old, clock)
    token = signer.sign(audience="crypto", principal="service:a", request_id="r")
    new_kid_keyset = Keyset.generate()
    both = Keyset(active_kid=new_kid_keyset.active_kid, keys={**old.keys, **new_kid_keyset.keys})
    verifier = AssertionVerifier(keyset=both, audience="crypto", clock=clock)
    assert verifier.verify(token).principal == "service:a"


def test_keyset_file_is_created_private_and_reloads_identically(tmp_path) -> None:
    path = tmp_path / "keys" / "internal.json"
    first = load_keyset(path, create_if_missing=True)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_keyset(path, create_if_missing=True) == first
    assert repr(first.keys[first.active_kid]) not in repr(first)


def test_short_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Keyset(active_kid="k", keys={"k": b"short"})


@pytest.mark.parametrize("where", [1, 2, 3])
def test_non_ascii_assertions_are_unauthenticated(keyset, clock, where) -> None:
    # A raw HTTP/2 client can send them; they must not surface as TypeError/UnicodeError.
    signer, verifier = _pair(keyset, clock)
    pieces = signer.sign(audience="crypto", principal="service:a", request_id="r").split(".")
    pieces[where] = pieces[where][:-1] + "é"
    with pytest.raises(Unauthenticated, match="malformed"):
        verifier.verify(".".join(pieces))


def test_long_user_agents_are_capped_so_assertions_stay_valid(keyset, clock) -> None:
    signer, verifier = _pair(keyset, clock)
    token = signer.sign(
        audience="crypto",
        principal="anonymous",
        request_id="r",
        user_agent="Mozilla/5.0 " + "x" * 10_000,
    )
    caller = verifier.verify(token)
    assert caller.user_agent is not None
    assert len(caller.user_agent) == 1024
    assert caller.user_agent == ("Mozilla/5.0 " + "x" * 10_000)[:1024]
