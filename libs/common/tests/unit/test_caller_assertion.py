from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from palisade.common.caller import AssertionSigner, AssertionVerifier, NoEdgeKey, ReplayCache
from palisade.common.clock import ManualClock
from palisade.common.edge_keys import EdgeKeyError, KeyDocument, KeySource, ServiceKeys
from palisade.common.edges import EDGES, Edge, parse_edge_name
from palisade.common.errors import Unauthenticated

METHOD = "/palisade.crypto.v1.CryptoService/Encrypt"
EDGES_UNDER_TEST = (
    Edge("gateway", "crypto", delegates=True),
    Edge("auth", "crypto"),
    Edge("gateway", "auth", delegates=True),
)


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def master():
    return KeyDocument.generate(EDGES_UNDER_TEST)


def _source(master, service):
    return KeySource.from_master(master, service, EDGES_UNDER_TEST)


def _pair(master, clock, audience="crypto", issuer="gateway"):
    signer = AssertionSigner(keys=_source(master, issuer), clock=clock, ttl_seconds=60)
    verifier = AssertionVerifier(keys=_source(master, audience), clock=clock)
    return signer, verifier


def _sign(signer, principal="service:gateway", request_id="r", **kwargs):
    return signer.sign(
        audience=kwargs.pop("audience", "crypto"),
        method=kwargs.pop("method", METHOD),
        principal=principal,
        request_id=request_id,
        **kwargs,
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_round_trip_carries_every_claim(master, clock) -> None:
    signer, verifier = _pair(master, clock)
    token = _sign(
        signer,
        "user:u1",
        "req-1",
        workspace_id="ws1",
        scopes=["chats:read", "visitors:read"],
    )
    caller = verifier.verify(token, method=METHOD)
    assert (caller.issuer, caller.audience, caller.principal) == ("gateway", "crypto", "user:u1")
    assert caller.workspace_id == "ws1"
    assert caller.scopes == ("chats:read", "visitors:read")
    assert caller.request_id == "req-1"
    assert caller.method == METHOD
    assert caller.assertion_id
    assert caller.expires_at - caller.issued_at == 60
    assert not caller.is_service


def test_expiry_follows_the_clock(master, clock) -> None:
    signer, verifier = _pair(master, clock)
    token = _sign(signer)
    clock.advance(59.9)
    assert verifier.verify(token, method=METHOD).is_service
    clock.advance(0.1)
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token, method=METHOD)


def test_future_assertion_beyond_skew_is_refused(master, clock) -> None:
    signer, verifier = _pair(master, clock)
    token = _sign(signer)
    clock.advance(-6)
    with pytest.raises(Unauthenticated, match="not yet valid"):
        verifier.verify(token, method=METHOD)


def test_wrong_audience_is_refused(master, clock) -> None:
    signer, _ = _pair(master, clock)
    verifier = AssertionVerifier(keys=_source(master, "auth"), clock=clock)
    with pytest.raises(Unauthenticated):
        verifier.verify(_sign(signer), method=METHOD)


def test_an_assertion_is_accepted_once(master, clock) -> None:
    signer, verifier = _pair(master, clock)
    token = _sign(signer)
    verifier.verify(token, method=METHOD)
    with pytest.raises(Unauthenticated, match="already used"):
        verifier.verify(token, method=METHOD)
    verifier.verify(_sign(signer), method=METHOD)  # a fresh one (new jti) is fine


def test_an_assertion_is_bound_to_its_method(master, clock) -> None:
    signer, verifier = _pair(master, clock)
    token = _sign(signer, method="/palisade.crypto.v1.CryptoService/KeyStatus")
    with pytest.raises(Unauthenticated, match="another method"):
        verifier.verify(token, method=METHOD)


def test_only_a_delegating_edge_may_assert_people(master, clock) -> None:
    signer, verifier = _pair(master, clock, issuer="auth")
    for principal in ("user:u1", "apikey:k1", "anonymous", "service:gateway", "service:x"):
        with pytest.raises(Unauthenticated, match="may not assert"):
            verifier.verify(_sign(signer, principal), method=METHOD)
    assert verifier.verify(_sign(signer, "service:auth"), method=METHOD).issuer == "auth"
    gateway, _ = _pair(master, clock)
    with pytest.raises(Unauthenticated, match="may not assert"):
        verifier.verify(_sign(gateway, "service:auth"), method=METHOD)  # not even the gateway


def test_a_service_cannot_sign_for_an_edge_it_is_not_on(master, clock) -> None:
    auth_keys = _source(master, "auth")
    signer = AssertionSigner(keys=auth_keys, clock=clock, ttl_seconds=60)
    with pytest.raises(NoEdgeKey):
        _sign(signer, "service:auth", audience="gateway")
    # Its file holds none of the gateway's keys: it cannot pass for the gateway either.
    assert set(auth_keys.current.signing) == {"crypto"}
    assert set(auth_keys.current.verifying) == {"gateway"}


def test_an_issuer_that_is_not_on_the_edge_is_refused(master, clock) -> None:
    # The auth service signs "as the gateway" with its own (auth->crypto) key.
    auth = _source(master, "auth").current.signing["crypto"].keys[0]
    claims = _claims(clock, iss="gateway", sub="user:u1")
    for header_issuer in ("gateway", "auth"):
        forged = _signed(header_issuer, auth.kid, auth.secret, claims)
        _, verifier = _pair(master, clock)
        with pytest.raises(Unauthenticated):
            verifier.verify(forged, method=METHOD)


@pytest.mark.parametrize("attempt", range(20))
def test_every_single_character_edit_is_refused(master, clock, attempt) -> None:
    # Run on many tokens: edits of a base64 segment's last character can hit its unused bits,
    # which a byte-level comparison would accept.
    signer, verifier = _pair(master, clock)
    token = _sign(signer, "user:u1", f"r{attempt}")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, char in enumerate(token):
        if char == ".":
            continue
        for replacement in alphabet.replace(char, "")[:: 7 if i < len(token) - 1 else 1]:
            edited = token[:i] + replacement + token[i + 1 :]
            with pytest.raises(Unauthenticated):
                verifier.verify(edited, method=METHOD)


def _claims(clock, **change):
    now = int(clock.timestamp())
    claims = {
        "iss": "gateway",
        "aud": "crypto",
        "mth": METHOD,
        "sub": "user:u",
        "rid": "r",
        "jti": "j1",
        "iat": now,
        "exp": now + 60,
    }
    claims.update(change)
    return {k: v for k, v in claims.items() if v is not ...}


def _signed(issuer, kid, secret, claims) -> str:
    signing_input = f"v2.{issuer}.{kid}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _resign(master, claims) -> str:
    key = master.edges["gateway:crypto"].keys[0]
    return _signed("gateway", key.kid, key.secret, claims)


@pytest.mark.parametrize(
    "change",
    [
        {"exp": 10**12},  # lifetime far beyond the cap
        {"iat": "0"},  # wrong types
        {"exp": True},
        {"sub": 5},
        {"scp": "chats:read"},
        {"aud": None},
        {"iss": "auth"},  # claims another issuer than the header
        {"jti": ...},  # no assertion id
        {"jti": ""},
        {"jti": "j" * 65},
        {"mth": ...},  # no method
    ],
)
def test_validly_signed_but_bad_claims_are_refused(master, clock, change) -> None:
    _, verifier = _pair(master, clock)
    with pytest.raises(Unauthenticated):
        verifier.verify(_resign(master, _claims(clock, **change)), method=METHOD)


def test_the_verifier_accepts_a_hand_signed_assertion(master, clock) -> None:
    _, verifier = _pair(master, clock)  # so the refusals above are about the change alone
    assert verifier.verify(_resign(master, _claims(clock)), method=METHOD).principal == "user:u"


@pytest.mark.parametrize(
    "token",
    [None, "", "v2", "v2.a.b", "v1.k.p.s", "v2.gateway.k.p.s.x", "x" * 5000, "v2.gateway.k.!!.??"],
)
def test_malformed_assertions_are_refused(master, clock, token) -> None:
    _, verifier = _pair(master, clock)
    with pytest.raises(Unauthenticated):
        verifier.verify(token, method=METHOD)


def test_rotation_overlaps_then_retirement_refuses_the_old_kid(master, clock) -> None:
    signer, _ = _pair(master, clock)
    old_token = _sign(signer)
    now = int(clock.timestamp())
    rotated = master.edges["gateway:crypto"].with_new_key(now)
    both = KeyDocument({**master.edges, "gateway:crypto": rotated})
    new_signer, verifier = _pair(both, clock)
    new_token = _sign(new_signer)
    assert new_token.split(".")[2] == rotated.keys[-1].kid != old_token.split(".")[2]
    assert verifier.verify(old_token, method=METHOD).issuer == "gateway"
    assert verifier.verify(new_token, method=METHOD).issuer == "gateway"
    retired = KeyDocument(
        {**both.edges, "gateway:crypto": rotated.without(old_token.split(".")[2])}
    )
    _, after = _pair(retired, clock)
    with pytest.raises(Unauthenticated, match="unknown key"):
        after.verify(_sign(signer), method=METHOD)


def test_a_delayed_key_verifies_at_once_but_signs_only_later(master, clock) -> None:
    now = int(clock.timestamp())
    rotated = master.edges["gateway:crypto"].with_new_key(now, delay_seconds=120)
    document = KeyDocument({**master.edges, "gateway:crypto": rotated})
    signer, verifier = _pair(document, clock)
    assert _sign(signer).split(".")[2] == rotated.keys[0].kid
    clock.advance(120)
    token = _sign(signer)
    assert token.split(".")[2] == rotated.keys[1].kid
    assert verifier.verify(token, method=METHOD)


def test_replay_cache_is_bounded_and_never_forgets_into_acceptance() -> None:
    cache = ReplayCache(capacity=3)
    assert all(cache.first_use(f"j{i}", 100 + i, now=0) for i in range(3))
    assert not cache.first_use("j0", 100, now=0)
    assert cache.first_use("j3", 103, now=0)  # j0 forgotten to make room...
    assert len(cache) == 3
    assert not cache.first_use("j0", 100, now=0)  # ...but refused: it expired no later
    assert not cache.first_use("late", 100, now=0)  # so is anything that old
    assert cache.first_use("j9", 160, now=101)  # expired entries go first
    assert len(cache) <= 3


def test_service_keys_refuse_a_file_holding_another_edge(master) -> None:
    gateways = master.for_service("gateway", EDGES_UNDER_TEST)
    smuggled = KeyDocument(
        {**gateways.edges, "auth:crypto": master.edges["auth:crypto"]}, "gateway"
    )
    with pytest.raises(EdgeKeyError, match="auth:crypto"):
        ServiceKeys.from_document(smuggled, "gateway", EDGES_UNDER_TEST)
    with pytest.raises(EdgeKeyError, match="not auth's"):
        ServiceKeys.from_document(gateways, "auth", EDGES_UNDER_TEST)


def test_key_documents_round_trip_and_hide_secrets(master) -> None:
    again = KeyDocument.from_json(master.to_json())
    assert again == master
    secret = master.edges["auth:crypto"].keys[0].secret
    assert repr(secret) not in repr(master)
    with pytest.raises(EdgeKeyError):
        KeyDocument.from_json(b'{"format": "palisade-edge-keys/1", "edges": {"a:b": [{}]}}')


def test_the_edge_list_names_each_edge_once() -> None:
    names = [e.name for e in EDGES]
    assert len(names) == len(set(names))
    assert parse_edge_name("gateway->auth") == parse_edge_name("gateway:auth")
    # Only the gateway, which authenticates people at the edge, may speak for them.
    assert {e.issuer for e in EDGES if e.delegates} == {"gateway"}


@pytest.mark.parametrize("where", [1, 2, 3, 4])
def test_non_ascii_assertions_are_unauthenticated(master, clock, where) -> None:
    # A raw HTTP/2 client can send them; they must not surface as TypeError/UnicodeError.
    signer, verifier = _pair(master, clock)
    pieces = _sign(signer).split(".")
    pieces[where] = pieces[where][:-1] + "é"
    with pytest.raises(Unauthenticated, match="malformed"):
        verifier.verify(".".join(pieces), method=METHOD)


def test_long_user_agents_are_capped_so_assertions_stay_valid(master, clock) -> None:
    signer, verifier = _pair(master, clock)
    token = _sign(signer, "anonymous", user_agent="Mozilla/5.0 " + "x" * 10_000)
    caller = verifier.verify(token, method=METHOD)
    assert caller.user_agent is not None
    assert len(caller.user_agent) == 1024
    assert caller.user_agent == ("Mozilla/5.0 " + "x" * 10_000)[:1024]
