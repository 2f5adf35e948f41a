"""Strict WebAuthn JSON parsing, passkey names and decoy credentials (no database, no sockets)."""

from __future__ import annotations

import json
from collections import Counter

import cbor2
import pytest

from palisade.auth.passkeys.errors import InvalidPasskeyCredential, InvalidPasskeyName
from palisade.auth.passkeys.management import clean_passkey_name
from palisade.auth.passkeys.webauthn_ceremony import decoy_credentials
from palisade.auth.passkeys.webauthn_json import (
    b64url_decode,
    b64url_encode,
    parse_authentication,
    parse_registration,
    transports_of,
)

RAW_ID = bytes(range(32))
CLIENT_DATA = json.dumps(
    {"type": "webauthn.get", "challenge": "AAAA", "origin": "http://localhost:8080"}
).encode()
AUTH_DATA = bytes(32) + b"\x05" + bytes(4)  # rpIdHash, UP|UV, counter 0


def _assertion(**response: object) -> dict:
    body = {
        "clientDataJSON": b64url_encode(CLIENT_DATA),
        "authenticatorData": b64url_encode(AUTH_DATA),
        "signature": b64url_encode(b"\x30\x06\x02\x01\x01\x02\x01\x01"),
        "userHandle": b64url_encode(b"h" * 32),
    }
    body.update(response)
    return {
        "id": b64url_encode(RAW_ID),
        "rawId": b64url_encode(RAW_ID),
        "type": "public-key",
        "response": body,
        "authenticatorAttachment": "some-future-attachment",  # ignored, not an error
        "clientExtensionResults": {},
    }


def _registration(**response: object) -> dict:
    attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": AUTH_DATA})
    body = {
        "clientDataJSON": b64url_encode(CLIENT_DATA),
        "attestationObject": b64url_encode(attestation),
        "transports": ["internal", "hybrid", "carrier-pigeon", 7.0, "internal"],
        "publicKeyAlgorithm": -7.0,  # a Struct makes numbers floats; never read
    }
    body.update(response)
    return {
        "id": b64url_encode(RAW_ID),
        "rawId": b64url_encode(RAW_ID),
        "type": "public-key",
        "response": body,
    }


def test_well_formed_responses_parse() -> None:
    assertion = parse_authentication(_assertion())
    assert assertion.raw_id == RAW_ID
    assert assertion.response.user_handle == b"h" * 32
    assert assertion.authenticator_attachment is None
    assert parse_authentication(_assertion(userHandle=None)).response.user_handle is None
    registration = parse_registration(_registration())
    assert registration.raw_id == RAW_ID
    assert [t.value for t in registration.response.transports] == ["hybrid", "internal"]
    assert transports_of(_registration()) == ["hybrid", "internal"]


@pytest.mark.parametrize(
    "value",
    ["", "AAAA", "AAA", "AA", "AAAA==", "AA==", "-_-_", "AQ"],
)
def test_base64url_accepts_standard_forms(value) -> None:
    assert b64url_decode(value, "f") is not None


@pytest.mark.parametrize(
    "value",
    ["A", "AAAAA", "AA+A", "AA/A", "A A", "AA\nAA", "AA===", "é", 5, None, b"AAAA", "A" * 70000],
)
def test_base64url_refuses_everything_else(value) -> None:
    with pytest.raises(InvalidPasskeyCredential):
        b64url_decode(value, "f")


ASSERTION_DEFECTS = {
    "not an object": ["x"],
    "a string": "{}",
    "no id": {k: v for k, v in _assertion().items() if k != "id"},
    "empty rawId": {**_assertion(), "rawId": ""},
    "rawId too long": {**_assertion(), "rawId": b64url_encode(bytes(1024))},
    "wrong type": {**_assertion(), "type": "public_key"},
    "no response": {k: v for k, v in _assertion().items() if k != "response"},
    "clientDataJSON padding junk": _assertion(clientDataJSON="e30==="),
    "clientDataJSON an array": _assertion(clientDataJSON=b64url_encode(b"[]")),
    "clientDataJSON without origin": _assertion(
        clientDataJSON=b64url_encode(b'{"type":"webauthn.get","challenge":"AA"}')
    ),
    "challenge a number": _assertion(
        clientDataJSON=b64url_encode(b'{"type":"webauthn.get","challenge":5,"origin":"o"}')
    ),
    "origin a number": _assertion(
        clientDataJSON=b64url_encode(b'{"type":"webauthn.get","challenge":"AA","origin":5}')
    ),
    "authenticatorData short": _assertion(authenticatorData=b64url_encode(bytes(36))),
    "authenticatorData trailing bytes": _assertion(
        authenticatorData=b64url_encode(AUTH_DATA + b"x")
    ),
    "attested data that is garbage": _assertion(
        authenticatorData=b64url_encode(bytes(32) + b"\x45" + bytes(4) + b"\xff" * 3)
    ),
    "no signature": _assertion(signature=None),
    "userHandle too long": _assertion(userHandle=b64url_encode(bytes(65))),
    "userHandle an object": _assertion(userHandle={"a": 1}),
}


@pytest.mark.parametrize("credential", ASSERTION_DEFECTS.values(), ids=ASSERTION_DEFECTS.keys())
def test_defective_assertions_are_invalid_input(credential) -> None:
    with pytest.raises(InvalidPasskeyCredential) as refused:
        parse_authentication(credential)
    assert refused.value.code == "invalid_passkey_credential"
    assert refused.value.status.name == "INVALID_ARGUMENT"


REGISTRATION_DEFECTS = {
    "not an object": 3.0,
    "no attestationObject": _registration(attestationObject=None),
    "garbage CBOR": _registration(attestationObject=b64url_encode(b"\xff\xff\xff")),
    "CBOR list": _registration(attestationObject=b64url_encode(cbor2.dumps([1, 2]))),
    "CBOR without authData": _registration(
        attestationObject=b64url_encode(cbor2.dumps({"fmt": "none", "attStmt": {}}))
    ),
    "CBOR authData truncated": _registration(
        attestationObject=b64url_encode(cbor2.dumps({"fmt": "none", "authData": b"\x00"}))
    ),
    "CBOR duplicate keys": _registration(
        attestationObject=b64url_encode(b"\xa2\x63fmt\x64none\x63fmt\x64none")
    ),
    "clientDataJSON not UTF-8 JSON": _registration(clientDataJSON=b64url_encode(b"\xff\xfe")),
}


@pytest.mark.parametrize(
    "credential", REGISTRATION_DEFECTS.values(), ids=REGISTRATION_DEFECTS.keys()
)
def test_defective_registrations_are_invalid_input(credential) -> None:
    with pytest.raises(InvalidPasskeyCredential):
        parse_registration(credential)


def test_names() -> None:
    assert clean_passkey_name("", default="Passkey") == "Passkey"
    assert clean_passkey_name("  Phone ", default="Passkey") == "Phone"
    assert clean_passkey_name("Cafe\u0301") == "Caf\u00e9"  # NFC
    assert clean_passkey_name("🔑 Work") == "🔑 Work"
    for bad in ("", "x" * 101, "a\nb", "\u202eevil", "\x1b[31mred"):
        with pytest.raises(InvalidPasskeyName):
            clean_passkey_name(bad)


def test_decoys_are_stable_per_seed_and_differ_between_seeds() -> None:
    first, again = decoy_credentials(b"seed-a"), decoy_credentials(b"seed-a")
    assert first == again
    others = {
        d.credential_id for t in (b"seed-b", b"seed-c", b"seed-d") for d in decoy_credentials(t)
    }
    assert others.isdisjoint(d.credential_id for d in first)


def test_decoys_are_shaped_like_real_allow_lists() -> None:
    # Issue 9 item 12: decoys used to be 1-2 ids of exactly 32 bytes with fixed transports.
    lists = [decoy_credentials(f"email-{i}".encode()) for i in range(2000)]
    counts = Counter(len(x) for x in lists)
    assert set(counts) == {1, 2, 3, 4}
    assert counts[1] > counts[2] > counts[3] > counts[4]  # most people have one passkey
    ids = [d for x in lists for d in x]
    lengths = Counter(len(d.credential_id) for d in ids)
    assert {16, 20, 32, 64} <= set(lengths)  # Google, Apple, Windows Hello, security keys
    assert max(lengths.values()) < 0.5 * len(ids)  # no single tell-tale length
    transports = Counter(d.transports for d in ids)
    assert {("hybrid", "internal"), ("internal",), ("nfc", "usb"), ()} <= set(transports)
    assert all(list(t) == sorted(t) for t in transports)  # stored (real) lists are sorted
    assert all(set(t) <= {"hybrid", "internal", "nfc", "usb"} for t in transports)
    assert len({d.credential_id for d in ids}) == len(ids)


def _client_data_with(tail: bytes) -> str:
    return b64url_encode(b'{"type":"webauthn.get","challenge":"AAAA","origin":"o"' + tail + b"}")


# Free JSON inside clientDataJSON (issue 9 item 4): each is a malformed response (400) before
# any challenge is used, never a 500 and never a "verification failure" on a burned challenge.
CLIENT_DATA_NUMBER_DEFECTS = {
    "NaN": _client_data_with(b',"crossOrigin":NaN'),
    "Infinity": _client_data_with(b',"x":Infinity'),
    "-Infinity": _client_data_with(b',"x":[-Infinity]'),
    "1e999": _client_data_with(b',"crossOrigin":1e999'),
    "a 400-digit integer": _client_data_with(b',"x":' + b"9" * 400),
    "a 5000-digit integer": _client_data_with(b',"x":-' + b"1" * 5000),
    "crossOrigin a string": _client_data_with(b',"crossOrigin":"false"'),
    "crossOrigin a number": _client_data_with(b',"crossOrigin":0'),
    "topOrigin a list": _client_data_with(b',"topOrigin":["o"]'),
    "type a number": b64url_encode(b'{"type":1,"challenge":"AAAA","origin":"o"}'),
    "origin a list": b64url_encode(b'{"type":"webauthn.get","challenge":"AAAA","origin":["o"]}'),
    "challenge null": b64url_encode(b'{"type":"webauthn.get","challenge":null,"origin":"o"}'),
    "UTF-16": b64url_encode(
        json.dumps({"type": "a", "challenge": "A", "origin": "o"}).encode("utf-16")
    ),
    "nested deeply": _client_data_with(b',"x":' + b"[" * 20000 + b"]" * 20000),
}


@pytest.mark.parametrize(
    "client_data", CLIENT_DATA_NUMBER_DEFECTS.values(), ids=CLIENT_DATA_NUMBER_DEFECTS.keys()
)
def test_free_json_in_client_data_is_invalid_input(client_data) -> None:
    with pytest.raises(InvalidPasskeyCredential):
        parse_authentication(_assertion(clientDataJSON=client_data))
    with pytest.raises(InvalidPasskeyCredential):
        parse_registration(_registration(clientDataJSON=client_data))


def test_client_data_with_ordinary_extra_members_still_parses() -> None:
    extra = _client_data_with(b',"crossOrigin":false,"topOrigin":"o","other_keys":[1,2.5,"x"]')
    parse_authentication(_assertion(clientDataJSON=extra))
