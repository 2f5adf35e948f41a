"""WebAuthn JSON in and out (L3), and the py_webauthn calls, in one place.

In: strict parsing of RegistrationResponseJSON / AuthenticationResponseJSON. Everything a client
can get wrong in the *shape* of a response (not a dict, a missing field, bad base64url,
clientDataJSON that is not a JSON object, CBOR that does not decode) becomes
InvalidPasskeyCredential (400) here, before any challenge is touched. What is left for
verification is well-formed data whose *meaning* may still be wrong (origin, rpIdHash, flags,
signature, counter), which the ceremonies answer with their own codes. py_webauthn's own parsers
are lenient in places (base64 decoding skips stray characters, CBOR errors surface as
verification failures), so the structs are built here. Numbers are never read: a
google.protobuf.Struct turns them into floats. clientDataJSON is parsed strictly (UTF-8, no NaN
or infinities, bounded integers, each member of its JSON type) before the library sees it.

Out: PublicKeyCredentialCreationOptionsJSON / RequestOptionsJSON dicts, and decoy credentials
for emails without passkeys. Verification wraps the library so that any failure, whatever it
raises for odd data, is one VerificationFailed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    options_to_json_dict,
    parse_attestation_object,
    parse_authenticator_data,
    parse_client_data_json,
)
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticationCredential,
    AuthenticatorAssertionResponse,
    AuthenticatorAttestationResponse,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialType,
    RegistrationCredential,
    ResidentKeyRequirement,
    UserVerificationRequirement,
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


# -- options out ---------------------------------------------------------------------------------

SUPPORTED_ALGORITHMS = [
    COSEAlgorithmIdentifier.ECDSA_SHA_256,
    COSEAlgorithmIdentifier.EDDSA,
    COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256,
]
# What real allow-lists look like, so a decoy list cannot be told from one: (credential id
# length, transports as stored: sorted, known values) of common authenticators, with rough
# population weights; and how many passkeys people register. Approximate public figures.
_DECOY_PROFILES: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    (30, 20, ("hybrid", "internal")),  # iCloud Keychain
    (25, 16, ("hybrid", "internal")),  # Google Password Manager
    (12, 32, ("hybrid", "internal")),  # Windows Hello, 1Password, Chrome profiles
    (6, 16, ("internal",)),  # other platform and software authenticators
    (6, 32, ("internal",)),
    (8, 64, ("nfc", "usb")),  # YubiKey 5 series
    (4, 48, ("usb",)),  # USB-only security keys
    (3, 64, ("hybrid", "internal", "usb")),
    (3, 32, ()),  # clients that report no transports
    (3, 96, ("nfc", "usb")),  # security keys that wrap the key in the id
)
_DECOY_COUNTS = ((60, 1), (25, 2), (10, 3), (5, 4))


@dataclass(frozen=True)
class Descriptor:
    """A credential as options list it: raw id and transport hints."""

    credential_id: bytes
    transports: tuple[str, ...]


def _descriptors(items: Sequence[Descriptor]) -> list[PublicKeyCredentialDescriptor]:
    return [
        PublicKeyCredentialDescriptor(
            id=d.credential_id, transports=[AuthenticatorTransport(t) for t in d.transports]
        )
        for d in items
    ]


class _Stream:
    """Deterministic bytes from a seed (HMAC-SHA256 in counter mode)."""

    def __init__(self, seed: bytes) -> None:
        self._seed, self._counter, self._buffer = seed, 0, b""

    def take(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = self._counter.to_bytes(4, "big")
            self._buffer += hmac.new(self._seed, block, hashlib.sha256).digest()
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def pick(self, weights: Sequence[int]) -> int:
        """An index drawn with the given weights."""
        point = int.from_bytes(self.take(8), "big") % sum(weights)  # bias < 2**-50
        for index, weight in enumerate(weights):
            point -= weight
            if point < 0:
                return index
        raise AssertionError("unreachable")


def decoy_credentials(seed: bytes) -> list[Descriptor]:
    """Credentials for an email without passkeys, shaped like a real allow-list: as many as
    people register, each with the id length and transports of a common authenticator. Stable
    per seed (auth's stable key and the email), unlinkable across emails, and random bytes
    like real ids, which are random or encrypted."""
    stream = _Stream(seed)
    count = _DECOY_COUNTS[stream.pick([w for w, _ in _DECOY_COUNTS])][1]
    decoys = []
    for _ in range(count):
        _, length, transports = _DECOY_PROFILES[stream.pick([p[0] for p in _DECOY_PROFILES])]
        decoys.append(Descriptor(stream.take(length), transports))
    return decoys


def creation_options(
    *,
    rp_id: str,
    rp_name: str,
    user_handle: bytes,
    user_name: str,
    user_display_name: str,
    challenge: bytes,
    timeout_ms: int,
    exclude: Sequence[Descriptor],
) -> dict[str, Any]:
    """A discoverable credential with user verification, no attestation."""
    options = generate_registration_options(
        rp_id=rp_id,
        rp_name=rp_name,
        user_name=user_name,
        user_id=user_handle,
        user_display_name=user_display_name,
        challenge=challenge,
        timeout=timeout_ms,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=_descriptors(exclude),
        supported_pub_key_algs=SUPPORTED_ALGORITHMS,
    )
    return options_to_json_dict(options)


def request_options(
    *, rp_id: str, challenge: bytes, timeout_ms: int, allow: Sequence[Descriptor]
) -> dict[str, Any]:
    """User verification required; an empty allow-list asks for a discoverable credential."""
    options = generate_authentication_options(
        rp_id=rp_id,
        challenge=challenge,
        timeout=timeout_ms,
        allow_credentials=_descriptors(allow),
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return options_to_json_dict(options)


# -- verification ----------------------------------------------------------------------------


class VerificationFailed(Exception):
    """The response is well-formed but does not verify; `kind` names the library error."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class NewCredential:
    credential_id: bytes
    public_key: bytes  # COSE_Key
    sign_count: int
    aaguid: str
    backup_eligible: bool
    backed_up: bool


@dataclass(frozen=True)
class Assertion:
    sign_count: int
    backup_eligible: bool
    backed_up: bool


def verify_registration(
    credential: RegistrationCredential, *, challenge: bytes, rp_id: str, origins: list[str]
) -> NewCredential:
    """Type, challenge, origin, rpIdHash, UP, UV, algorithm, attestation; the id matches."""
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origins,
            require_user_presence=True,
            require_user_verification=True,
            supported_pub_key_algs=SUPPORTED_ALGORITHMS,
        )
    except Exception as error:  # the library's own errors, and anything odd in the data
        raise VerificationFailed(type(error).__name__) from None
    if verified.credential_id != credential.raw_id:
        raise VerificationFailed("credential_id_mismatch")
    return NewCredential(
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        aaguid=verified.aaguid,
        backup_eligible=verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE,
        backed_up=verified.credential_backed_up,
    )


def verify_assertion(
    credential: AuthenticationCredential,
    *,
    challenge: bytes,
    rp_id: str,
    origins: list[str],
    public_key: bytes,
) -> Assertion:
    """Type, challenge, origin (top-level only), rpIdHash, UP, UV and the signature.

    The signature counter is left to the caller (the library's check is turned off with a
    stored count of 0), so that a regression is judged, and audited, on a valid signature.
    """
    if parse_client_data_json(credential.response.client_data_json).cross_origin:
        raise VerificationFailed("cross_origin")  # inside someone else's frame
    try:
        verified = verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origins,
            credential_public_key=public_key,
            credential_current_sign_count=0,
            require_user_verification=True,
        )
    except Exception as error:  # the library's own errors, and anything odd in the data
        raise VerificationFailed(type(error).__name__) from None
    return Assertion(
        sign_count=verified.new_sign_count,
        backup_eligible=verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE,
        backed_up=verified.credential_backed_up,
    )
