"""Caller assertions as the auth service receives them (SECURITY.md 32): whatever arrives in the
`x-palisade-caller` metadata, verify() answers with Unauthenticated, never another exception."""

from __future__ import annotations

import pytest

from palisade.common.caller import (
    AssertionSigner,
    AssertionVerifier,
    Caller,
    current_caller,
    require_caller,
    require_service_caller,
)
from palisade.common.clock import ManualClock
from palisade.common.edge_keys import KeyDocument, KeySource
from palisade.common.errors import PermissionDenied, Unauthenticated


@pytest.fixture
def clock():
    return ManualClock()


METHOD = "/palisade.auth.v1.AuthService/Login"


@pytest.fixture
def master():
    return KeyDocument.generate()


class _Signer:
    """The gateway's signer, always for auth's Login."""

    def __init__(self, master, clock) -> None:
        keys = KeySource.from_master(master, "gateway")
        self._signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=60)

    def sign(self, **claims):
        return self._signer.sign(method=METHOD, **claims)


class _Verifier:
    def __init__(self, master, clock) -> None:
        self._verifier = AssertionVerifier(keys=KeySource.from_master(master, "auth"), clock=clock)

    def verify(self, token):
        return self._verifier.verify(token, method=METHOD)


@pytest.fixture
def signer(master, clock):
    return _Signer(master, clock)


@pytest.fixture
def verifier(master, clock):
    return _Verifier(master, clock)


def test_client_ip_and_user_agent_round_trip(signer, verifier) -> None:
    ua = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0 \u00e9"
    token = signer.sign(
        audience="auth",
        principal="anonymous",
        request_id="r1",
        client_ip="2001:db8::1",
        user_agent=ua,
        session_id="ses_1",
    )
    caller = verifier.verify(token)
    assert caller.client_ip == "2001:db8::1"
    assert caller.user_agent == ua
    assert caller.session_id == "ses_1"
    assert token.isascii()


def _edits(token: str) -> list[str]:
    version, issuer, kid, payload, signature = token.split(".")
    return [
        f"{version}.{issuer}.{kid}.{payload}\u00e9.{signature}",  # non-ASCII in the signed part
        f"{version}.{issuer}.{kid}.{payload}.{signature[:-1]}\u00e9",  # non-ASCII signature
        f"{version}.{issuer}.{kid}.{payload}.\u00e9",
        f"{version}.{issuer}.{kid}.{payload}.{signature}\u00e9",
        f"{version}.{issuer}.{kid}.\ud800.{signature}",  # lone surrogate
        f"{version}.{issuer}.{kid}.{payload}.\ud800",
        f"{version}.{issuer}.{kid}.{payload}.\uff21" + signature[1:],  # fullwidth "A"
        f"{version}.{issuer}.{kid}.{payload}.\x00{signature[1:]}",
        f"{version}.{issuer}.{kid}.\x00.{signature}",
        f"{version}.{issuer}.{kid}\u00e9.{payload}.{signature}",
        f"v\u00b9.{issuer}.{kid}.{payload}.{signature}",  # superscript one
    ]


def test_non_ascii_anywhere_is_unauthenticated(signer, verifier) -> None:
    token = signer.sign(audience="auth", principal="user:u1", request_id="r1")
    leaked = []
    for edited in _edits(token):
        try:
            verifier.verify(edited)
        except Unauthenticated:
            continue
        except Exception as exc:
            leaked.append((ascii(edited[-12:]), type(exc).__name__))
        else:
            leaked.append((ascii(edited[-12:]), "accepted"))
    assert leaked == []


def test_non_ascii_signature_is_unauthenticated(signer, verifier) -> None:
    token = signer.sign(audience="auth", principal="user:u1", request_id="r1")
    with pytest.raises(Unauthenticated):
        verifier.verify(token[:-1] + "\u00e9")


def test_non_ascii_claims_segment_is_unauthenticated(signer, verifier) -> None:
    version, issuer, kid, payload, signature = signer.sign(
        audience="auth", principal="user:u1", request_id="r1"
    ).split(".")
    with pytest.raises(Unauthenticated):
        verifier.verify(f"{version}.{issuer}.{kid}.{payload}\u00e9.{signature}")


def test_length_cap(signer, verifier) -> None:
    token = signer.sign(audience="auth", principal="user:u1", request_id="r" * 2800)
    assert len(token) <= 4096
    assert verifier.verify(token).request_id == "r" * 2800
    too_long = signer.sign(audience="auth", principal="user:u1", request_id="r" * 3100)
    assert len(too_long) > 4096
    with pytest.raises(Unauthenticated):
        verifier.verify(too_long)


def test_require_caller_without_one_is_unauthenticated() -> None:
    reset = current_caller.set(None)
    try:
        with pytest.raises(Unauthenticated):
            require_caller()
    finally:
        current_caller.reset(reset)


@pytest.mark.parametrize(
    ("principal", "allowed"),
    [
        ("service:gateway", True),
        ("user:u1", False),
        ("apikey:k1", False),
        ("anonymous", False),
        ("Service:gateway", False),
        ("xservice:gateway", False),
    ],
)
def test_require_service_caller(principal, allowed) -> None:
    caller = Caller(
        issuer="gateway",
        audience="auth",
        principal=principal,
        request_id="r",
        issued_at=0,
        expires_at=60,
    )
    reset = current_caller.set(caller)
    try:
        if allowed:
            assert require_service_caller() is caller
        else:
            with pytest.raises(PermissionDenied):
                require_service_caller()
    finally:
        current_caller.reset(reset)
