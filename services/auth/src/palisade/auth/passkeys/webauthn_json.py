"""WebAuthn JSON in (L3): strict parsing of RegistrationResponseJSON / AuthenticationResponseJSON.

Everything a client can get wrong in the *shape* of a response (not a dict, a missing field, bad
base64url, clientDataJSON that is not a JSON object, CBOR that does not decode) becomes
InvalidPasskeyCredential (400) here, before any challenge is touched. What is left for
verification is well-formed data whose *meaning* may still be wrong (origin, rpIdHash, flags,
signature, counter), which the ceremonies answer with their own codes. py_webauthn's own parsers
are lenient in places (base64 decoding skips stray characters, CBOR errors surface as
verification failures), so the structs are built here. Numbers are never read: a
google.protobuf.Struct turns them into floats. clientDataJSON is parsed strictly (UTF-8, no NaN
or infinities, bounded integers, each member of its JSON type) before the library sees it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from webauthn.helpers import (
    parse_attestation_object,
    parse_authenticator_data,
    parse_client_data_json,
)
from webauthn.helpers.structs import (
    AuthenticationCredential,
    AuthenticatorAssertionResponse,
    AuthenticatorAttestationResponse,
    AuthenticatorTransport,
    PublicKeyCredentialType,
    RegistrationCredential,
)

from palisade.auth.passkeys.errors import InvalidPasskeyCredential

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
# Generous bounds: real responses are a few hundred bytes (attestation with certificates, a few
# KiB). The gateway caps bodies too; this keeps a hostile field from reaching the decoders.
MAX_FIELD_CHARS = 64 * 1024
MAX_CREDENTIAL_ID_BYTES = 1023  # WebAuthn L3 5.8.3
MAX_USER_HANDLE_BYTES = 64
_KNOWN_TRANSPORTS = {t.value for t in AuthenticatorTransport}
MAX_TRANSPORTS = 8
MAX_INTEGER_DIGITS = 64  # client data has no numbers; a 400-digit one is an attack


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, as WebAuthn JSON uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(value: object, field: str) -> bytes:
    """Strict base64url (padding optional); anything else is a malformed response."""
    if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
        raise InvalidPasskeyCredential(f"{field} must be a base64url string")
    text = value.rstrip("=")
    if len(value) - len(text) > 2 or not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise InvalidPasskeyCredential(f"{field} is not valid base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidPasskeyCredential(f"{field} is not valid base64url") from None


def _object(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidPasskeyCredential(f"{field} must be an object")
    return value


def _raw_id(credential: Mapping[str, Any]) -> bytes:
    if credential.get("type") != PublicKeyCredentialType.PUBLIC_KEY.value:
        raise InvalidPasskeyCredential('credential.type must be "public-key"')
    if not isinstance(credential.get("id"), str):
        raise InvalidPasskeyCredential("credential.id must be a base64url string")
    raw_id = b64url_decode(credential.get("rawId"), "credential.rawId")
    if not 1 <= len(raw_id) <= MAX_CREDENTIAL_ID_BYTES:
        raise InvalidPasskeyCredential("credential.rawId has an invalid length")
    return raw_id


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError("number out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise ValueError("number out of range")
    return int(text)


def strict_json(data: bytes) -> object:
    """UTF-8 JSON (RFC 8259) with finite, bounded numbers; ValueError for anything else."""
    try:
        return json.loads(
            data.decode("utf-8"),
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None


# CollectedClientData members and their JSON types (WebAuthn L3 5.8.1); others are ignored.
_CLIENT_DATA_TYPES: dict[str, tuple[type, bool]] = {
    "type": (str, True),
    "challenge": (str, True),
    "origin": (str, True),
    "crossOrigin": (bool, False),
    "topOrigin": (str, False),
}


def _client_data(response: Mapping[str, Any]) -> bytes:
    data = b64url_decode(response.get("clientDataJSON"), "credential.response.clientDataJSON")
    invalid = "clientDataJSON is not a valid client data object"
    try:
        document = strict_json(data)
    except ValueError:  # also UnicodeDecodeError and json.JSONDecodeError
        raise InvalidPasskeyCredential(invalid) from None
    if not isinstance(document, dict):
        raise InvalidPasskeyCredential(invalid)
    for member, (kind, required) in _CLIENT_DATA_TYPES.items():
        value = document.get(member)
        if (value is None and required) or (value is not None and type(value) is not kind):
            raise InvalidPasskeyCredential(invalid)
    try:
        parse_client_data_json(data)
    except Exception:  # the library raises several types for bad input (e.g. the challenge)
        raise InvalidPasskeyCredential(invalid) from None
    return data


def transports_of(credential: object) -> list[str]:
    """The known transport hints of a registration response (unknown ones are dropped)."""
    response = credential.get("response") if isinstance(credential, Mapping) else None
    values = response.get("transports") if isinstance(response, Mapping) else None
    if not isinstance(values, list):
        return []
    known = [v for v in values if isinstance(v, str) and v in _KNOWN_TRANSPORTS]
    return sorted(set(known))[:MAX_TRANSPORTS]


def parse_registration(credential: object) -> RegistrationCredential:
    """RegistrationResponseJSON -> py_webauthn's struct, or InvalidPasskeyCredential."""
    body = _object(credential, "credential")
    raw_id = _raw_id(body)
    response = _object(body.get("response"), "credential.response")
    client_data = _client_data(response)
    attestation = b64url_decode(
        response.get("attestationObject"), "credential.response.attestationObject"
    )
    try:
        parse_attestation_object(attestation)
    except Exception:  # garbage CBOR raises whatever cbor2 raises
        raise InvalidPasskeyCredential("attestationObject is not valid CBOR") from None
    return RegistrationCredential(
        id=body["id"],
        raw_id=raw_id,
        response=AuthenticatorAttestationResponse(
            client_data_json=client_data,
            attestation_object=attestation,
            transports=[AuthenticatorTransport(t) for t in transports_of(body)],
        ),
        type=PublicKeyCredentialType.PUBLIC_KEY,
    )


def parse_authentication(credential: object) -> AuthenticationCredential:
    """AuthenticationResponseJSON -> py_webauthn's struct, or InvalidPasskeyCredential."""
    body = _object(credential, "credential")
    raw_id = _raw_id(body)
    response = _object(body.get("response"), "credential.response")
    client_data = _client_data(response)
    authenticator_data = b64url_decode(
        response.get("authenticatorData"), "credential.response.authenticatorData"
    )
    try:
        parse_authenticator_data(authenticator_data)
    except Exception:  # truncated data, bad CBOR extensions, leftover bytes
        raise InvalidPasskeyCredential("authenticatorData is malformed") from None
    signature = b64url_decode(response.get("signature"), "credential.response.signature")
    if not signature:
        raise InvalidPasskeyCredential("credential.response.signature is empty")
    user_handle: bytes | None = None
    if response.get("userHandle") not in (None, ""):
        user_handle = b64url_decode(response["userHandle"], "credential.response.userHandle")
        if len(user_handle) > MAX_USER_HANDLE_BYTES:
            raise InvalidPasskeyCredential("credential.response.userHandle is too long")
    return AuthenticationCredential(
        id=body["id"],
        raw_id=raw_id,
        response=AuthenticatorAssertionResponse(
            client_data_json=client_data,
            authenticator_data=authenticator_data,
            signature=signature,
            user_handle=user_handle,
        ),
        type=PublicKeyCredentialType.PUBLIC_KEY,
    )
