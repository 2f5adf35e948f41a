"""A software WebAuthn authenticator (and the browser's part of the ceremony) for tests.

It turns PublicKeyCredentialCreationOptionsJSON into RegistrationResponseJSON (attestation
"none", an EC P-256 / ES256 key) and PublicKeyCredentialRequestOptionsJSON into
AuthenticationResponseJSON, as `PublicKeyCredential.toJSON()` would give them. Every field the
relying party must check has a knob, for one-field mutation tests (SECURITY.md 20):

    authn = SoftAuthenticator(origin="http://localhost:8080")
    registration = authn.create(creation_options)           # dict, ready to send
    assertion = authn.get(request_options)                  # dict, ready to send
    authn.get(request_options, origin="https://evil.example")   # wrong origin
    authn.get(request_options, rp_id="evil.example")        # wrong rpIdHash
    authn.get(request_options, up=False) / (uv=False)       # flags
    authn.get(request_options, sign_count=3)                # a counter of your choice
    authn.get(request_options, flip_signature_bit=True)     # a broken signature
    authn.replay()                                          # the last assertion, again

Options may be the bare WebAuthn options or the `{challengeId, publicKey}` answer around them;
numbers may be floats (a google.protobuf.Struct makes them so). Only the standard library,
`cryptography` and `cbor2` are used, so any test can import this module:

    from softauthn import SoftAuthenticator        # with tests/support on sys.path
    from ..support.softauthn import SoftAuthenticator   # from a module under tests/
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "FLAG_AT",
    "FLAG_BE",
    "FLAG_BS",
    "FLAG_ED",
    "FLAG_UP",
    "FLAG_UV",
    "UNSET",
    "SoftAuthenticator",
    "SoftCredential",
    "b64url",
    "credential_ids",
    "from_b64url",
]

FLAG_UP = 0x01  # user present
FLAG_UV = 0x04  # user verified
FLAG_BE = 0x08  # backup eligible
FLAG_BS = 0x10  # backed up
FLAG_AT = 0x40  # attested credential data included
FLAG_ED = 0x80  # extension data included
COSE_ALG_ES256 = -7


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "the authenticator's normal behaviour" for a knob


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def from_b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _options(options: Mapping[str, Any]) -> Mapping[str, Any]:
    """The WebAuthn options, also when given the `{challengeId, publicKey}` wrapper."""
    inner = options.get("publicKey", options.get("public_key"))
    return inner if isinstance(inner, Mapping) else options


@dataclass
class SoftCredential:
    """A discoverable credential: the private key never leaves the authenticator."""

    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    user_name: str = ""
    sign_count: int = 0

    @property
    def id(self) -> str:
        """The credential id, base64url (as `id` / `rawId` in the JSON)."""
        return b64url(self.credential_id)

    def cose_public_key(self) -> bytes:
        numbers = self.private_key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,  # kty: EC2
                3: COSE_ALG_ES256,
                -1: 1,  # crv: P-256
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

    def spki_public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass
class SoftAuthenticator:
    """A platform authenticator holding discoverable ES256 credentials.

    `counter_step` is how much the signature counter goes up per assertion: 1 like a security
    key, 0 for a constant-zero counter like synced passkeys.
    """

    origin: str = "http://localhost:8080"
    aaguid: bytes = bytes(16)
    backup_eligible: bool = True
    backed_up: bool = True
    counter_step: int = 1
    transports: tuple[str, ...] = ("hybrid", "internal")
    attachment: str = "platform"
    credentials: list[SoftCredential] = field(default_factory=list)
    assertions: list[dict[str, Any]] = field(default_factory=list)

    # -- registration: navigator.credentials.create() ----------------------------------------

    def create(
        self,
        options: Mapping[str, Any],
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        challenge: str | bytes | None = None,
        client_data_type: str = "webauthn.create",
        cross_origin: bool = False,
        up: bool = True,
        uv: bool = True,
        be: bool | None = None,
        bs: bool | None = None,
        sign_count: int = 0,
        credential_id: bytes | None = None,
        honor_exclude: bool = True,
    ) -> dict[str, Any]:
        """A RegistrationResponseJSON for these creation options; keeps the new credential.

        `rp_id` changes only the rpIdHash (the credential is still kept for the options' RP);
        `credential_id` forces an id (e.g. one another user already registered).
        """
        opts = _options(options)
        real_rp_id = str(opts["rp"].get("id") or rp_id or "")
        algorithms = {int(p["alg"]) for p in opts.get("pubKeyCredParams", [])}
        if algorithms and COSE_ALG_ES256 not in algorithms:
            raise ValueError("this authenticator only makes ES256 keys")
        if honor_exclude:
            excluded = {from_b64url(c["id"]) for c in opts.get("excludeCredentials") or []}
            if any(c.credential_id in excluded for c in self.credentials):
                raise ValueError("InvalidStateError: a credential here is in excludeCredentials")
        credential = SoftCredential(
            credential_id=credential_id or secrets.token_bytes(32),
            private_key=ec.generate_private_key(ec.SECP256R1()),
            rp_id=real_rp_id,
            user_handle=from_b64url(opts["user"]["id"]),
            user_name=str(opts["user"].get("name", "")),
            sign_count=sign_count,
        )
        flags = self._flags(up=up, uv=uv, be=be, bs=bs) | FLAG_AT
        auth_data = (
            self._rp_hash(rp_id or real_rp_id)
            + bytes([flags])
            + sign_count.to_bytes(4, "big")
            + self.aaguid
            + len(credential.credential_id).to_bytes(2, "big")
            + credential.credential_id
            + credential.cose_public_key()
        )
        client_data = self._client_data(
            client_data_type, challenge or opts["challenge"], origin, cross_origin
        )
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        self.credentials.append(credential)
        return {
            "id": credential.id,
            "rawId": credential.id,
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "authenticatorData": b64url(auth_data),
                "transports": list(self.transports),
                "publicKeyAlgorithm": COSE_ALG_ES256,
                "publicKey": b64url(credential.spki_public_key()),
            },
            "authenticatorAttachment": self.attachment,
            "clientExtensionResults": {},
        }

    # -- authentication: navigator.credentials.get() -----------------------------------------

    def get(
        self,
        options: Mapping[str, Any],
        *,
        credential_id: bytes | str | None = None,
        origin: str | None = None,
        rp_id: str | None = None,
        challenge: str | bytes | None = None,
        client_data_type: str = "webauthn.get",
        cross_origin: bool = False,
        up: bool = True,
        uv: bool = True,
        be: bool | None = None,
        bs: bool | None = None,
        sign_count: int | None = None,
        flip_signature_bit: bool = False,
        user_handle: bytes | None = UNSET,
    ) -> dict[str, Any]:
        """An AuthenticationResponseJSON for these request options.

        The credential is `credential_id` if given (even if the allow-list does not name it),
        else the newest one for the RP that the allow-list names (any, if it is empty).
        `sign_count` sets the counter (and remembers it); `user_handle=None` leaves it out.
        """
        opts = _options(options)
        credential = self._choose(opts, credential_id)
        if sign_count is None:
            sign_count = credential.sign_count + self.counter_step
        credential.sign_count = sign_count
        auth_data = (
            self._rp_hash(rp_id or credential.rp_id)
            + bytes([self._flags(up=up, uv=uv, be=be, bs=bs)])
            + sign_count.to_bytes(4, "big")
        )
        client_data = self._client_data(
            client_data_type, challenge or opts["challenge"], origin, cross_origin
        )
        signature = bytearray(
            credential.private_key.sign(
                auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
            )
        )
        if flip_signature_bit:
            signature[-1] ^= 0x01  # the low bit of s: still valid DER, no longer a signature
        handle = credential.user_handle if user_handle is UNSET else user_handle
        response: dict[str, Any] = {
            "clientDataJSON": b64url(client_data),
            "authenticatorData": b64url(auth_data),
            "signature": b64url(bytes(signature)),
        }
        if handle is not None:
            response["userHandle"] = b64url(handle)
        assertion = {
            "id": credential.id,
            "rawId": credential.id,
            "type": "public-key",
            "response": response,
            "authenticatorAttachment": self.attachment,
            "clientExtensionResults": {},
        }
        self.assertions.append(assertion)
        return copy.deepcopy(assertion)

    def replay(self, index: int = -1) -> dict[str, Any]:
        """A copy of an assertion made earlier (default: the last), byte for byte."""
        return copy.deepcopy(self.assertions[index])

    def clone(self) -> SoftAuthenticator:
        """Another authenticator with the same keys and counters (a cloned device)."""
        twin = copy.copy(self)
        twin.credentials = [copy.copy(c) for c in self.credentials]
        twin.assertions = []
        return twin

    def credential(self, credential_id: bytes | str | None = None) -> SoftCredential:
        """A credential by id (bytes or base64url), or the newest."""
        if credential_id is None:
            return self.credentials[-1]
        wanted = from_b64url(credential_id) if isinstance(credential_id, str) else credential_id
        for credential in self.credentials:
            if credential.credential_id == wanted:
                return credential
        raise LookupError("no such credential on this authenticator")

    # -- internals ---------------------------------------------------------------------------

    def _choose(self, opts: Mapping[str, Any], credential_id: bytes | str | None) -> SoftCredential:
        if credential_id is not None:
            return self.credential(credential_id)
        rp_id = opts.get("rpId")
        allowed = {from_b64url(c["id"]) for c in opts.get("allowCredentials") or []}
        candidates = [
            c
            for c in self.credentials
            if (rp_id is None or c.rp_id == rp_id) and (not allowed or c.credential_id in allowed)
        ]
        if not candidates:
            raise LookupError("NotAllowedError: no credential here matches these options")
        return candidates[-1]

    def _flags(self, *, up: bool, uv: bool, be: bool | None, bs: bool | None) -> int:
        be = self.backup_eligible if be is None else be
        bs = self.backed_up if bs is None else bs
        return (
            (FLAG_UP if up else 0)
            | (FLAG_UV if uv else 0)
            | (FLAG_BE if be else 0)
            | (FLAG_BS if bs else 0)
        )

    @staticmethod
    def _rp_hash(rp_id: str) -> bytes:
        return hashlib.sha256(rp_id.encode()).digest()

    def _client_data(
        self, kind: str, challenge: str | bytes, origin: str | None, cross_origin: bool
    ) -> bytes:
        body: dict[str, Any] = {
            "type": kind,
            "challenge": b64url(challenge) if isinstance(challenge, bytes) else challenge,
            "origin": origin or self.origin,
            "crossOrigin": cross_origin,
        }
        if cross_origin:
            body["topOrigin"] = "https://top.example"
        return json.dumps(body, separators=(",", ":")).encode()


def credential_ids(options: Mapping[str, Any], key: str = "allowCredentials") -> list[bytes]:
    """The raw credential ids an options object lists (allowCredentials/excludeCredentials)."""
    items: Iterable[Mapping[str, Any]] = _options(options).get(key) or []
    return [from_b64url(c["id"]) for c in items]
