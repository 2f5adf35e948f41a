"""WebAuthn out (L3), and the py_webauthn verification calls, in one place.

PublicKeyCredentialCreationOptionsJSON / RequestOptionsJSON dicts, and decoy credentials for
emails without passkeys. Verification wraps the library so that any failure, whatever it raises
for odd data, is one VerificationFailed. Parsing what clients send is webauthn_json.py.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
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
    parse_client_data_json,
)
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticationCredential,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    RegistrationCredential,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

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
