"""The signed caller assertion: who is calling, attested by the gateway or a peer service.

Every internal gRPC call carries one in the `x-palisade-caller` metadata entry. The format is

    v1.<kid>.<base64url(JSON claims)>.<base64url(HMAC-SHA256(key[kid], "v1.<kid>.<claims>"))>

HMAC-SHA256 with a keyset shared inside the cluster (a Kubernetes Secret) keeps verification in
the microsecond range on every call; the kid allows rotating the key without downtime. The
claims bind the assertion to one audience (the service called), a short lifetime and a request
id. Services trust identity only from a verified assertion, never from other metadata.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palisade.common.clock import Clock
from palisade.common.errors import Unauthenticated
from palisade.common.secret_files import check_secret_file, create_exclusive


class InvalidCallerAssertion(Unauthenticated):
    """The calling service's assertion is missing or bad: a fault between services (or an
    attacker inside the network), never the end user's, so the gateway does not pass it on."""

    code = "caller_assertion_invalid"


CALLER_METADATA_KEY = "x-palisade-caller"
REQUEST_ID_METADATA_KEY = "x-request-id"
_VERSION = "v1"
# Tolerated clock difference between signer and verifier.
_MAX_SKEW_SECONDS = 5
# No assertion may claim to live longer than this, whatever its signer asked for.
_MAX_LIFETIME_SECONDS = 300
_MAX_ASSERTION_LENGTH = 4096
_MAX_USER_AGENT_CLAIM = 1024  # bytes of JSON


@dataclass(frozen=True)
class Caller:
    """The verified identity of the party behind an RPC."""

    issuer: str  # the service that signed: "gateway", "auth", ...
    audience: str  # the service the assertion is for
    principal: str  # "service:<name>", "user:<id>" or "apikey:<id>"
    request_id: str
    issued_at: int
    expires_at: int
    workspace_id: str | None = None
    scopes: tuple[str, ...] = ()
    # Set by the gateway from the connection (never from client headers it does not trust).
    session_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None

    @property
    def is_service(self) -> bool:
        return self.principal.startswith("service:")


current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "palisade_current_caller", default=None
)


@dataclass(frozen=True)
class Keyset:
    """Internal signing keys by id; new assertions use active_kid, any listed kid verifies."""

    active_kid: str
    keys: Mapping[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        if self.active_kid not in self.keys:
            raise ValueError("the active kid is not among the keys")
        if any(len(k) < 32 for k in self.keys.values()):
            raise ValueError("internal signing keys must be at least 32 bytes")

    @classmethod
    def generate(cls) -> Keyset:
        kid = secrets.token_hex(4)
        return cls(active_kid=kid, keys={kid: secrets.token_bytes(32)})

    def to_json(self) -> bytes:
        keys = {kid: base64.b64encode(k).decode() for kid, k in self.keys.items()}
        return json.dumps({"active_kid": self.active_kid, "keys": keys}, indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Keyset:
        doc = json.loads(raw)
        keys = {str(kid): base64.b64decode(v, validate=True) for kid, v in doc["keys"].items()}
        return cls(active_kid=str(doc["active_kid"]), keys=keys)


def load_keyset(path: Path, *, create_if_missing: bool) -> Keyset:
    """Reads the internal keyset; in the embedded default, creates it (0600) on first run."""
    if create_if_missing and not path.exists():
        create_exclusive(path, Keyset.generate().to_json())
    check_secret_file(path)
    return Keyset.from_json(path.read_bytes())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AssertionSigner:
    """Mints assertions for calls this process makes (gateway: for users; services: as itself)."""

    def __init__(self, *, keyset: Keyset, issuer: str, clock: Clock, ttl_seconds: int) -> None:
        self._keyset = keyset
        self._issuer = issuer
        self._clock = clock
        self._ttl = min(ttl_seconds, _MAX_LIFETIME_SECONDS)

    def sign(
        self,
        *,
        audience: str,
        principal: str,
        request_id: str,
        workspace_id: str | None = None,
        scopes: Sequence[str] = (),
        session_id: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> str:
        now = int(self._clock.timestamp())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": audience,
            "sub": principal,
            "rid": request_id,
            "iat": now,
            "exp": now + self._ttl,
        }
        if workspace_id is not None:
            claims["ws"] = workspace_id
        if scopes:
            claims["scp"] = list(scopes)
        # A client-chosen User-Agent must not push the assertion past the verifier's limit.
        agent = _bounded(user_agent, _MAX_USER_AGENT_CLAIM) if user_agent is not None else None
        optional = {"sid": session_id, "ip": client_ip, "ua": agent}
        claims.update({k: v for k, v in optional.items() if v is not None})
        kid = self._keyset.active_kid
        signing_input = (
            f"{_VERSION}.{kid}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
        )
        mac = hmac.new(self._keyset.keys[kid], signing_input.encode("ascii"), hashlib.sha256)
        return f"{signing_input}.{_b64(mac.digest())}"


class AssertionVerifier:
    """Checks assertions addressed to one service; raises Unauthenticated on any defect."""

    def __init__(self, *, keyset: Keyset, audience: str, clock: Clock) -> None:
        self._keyset = keyset
        self._audience = audience
        self._clock = clock

    def verify(self, assertion: str | None) -> Caller:
        if not assertion or len(assertion) > _MAX_ASSERTION_LENGTH:
            raise InvalidCallerAssertion("missing caller assertion")
        if not assertion.isascii():  # what follows encodes and compares as ASCII
            raise InvalidCallerAssertion("malformed caller assertion")
        parts = assertion.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            raise InvalidCallerAssertion("malformed caller assertion")
        version, kid, payload, signature = parts
        key = self._keyset.keys.get(kid)
        if key is None:
            raise InvalidCallerAssertion("caller assertion signed with an unknown key")
        expected = hmac.new(key, f"{version}.{kid}.{payload}".encode("ascii"), hashlib.sha256)
        # Compare the canonical encoding, not decoded bytes: base64's last character has
        # unused bits, and accepting their variants would make assertions malleable.
        if not hmac.compare_digest(_b64(expected.digest()), signature):
            raise InvalidCallerAssertion("caller assertion signature is invalid")
        try:
            claims = json.loads(_unb64(payload))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise InvalidCallerAssertion("malformed caller assertion") from None
        return self._check_claims(claims)

    def _check_claims(self, claims: Any) -> Caller:
        if not isinstance(claims, dict):
            raise InvalidCallerAssertion("malformed caller assertion")
        try:
            caller = Caller(
                issuer=_str(claims["iss"]),
                audience=_str(claims["aud"]),
                principal=_str(claims["sub"]),
                request_id=_str(claims["rid"]),
                issued_at=_int(claims["iat"]),
                expires_at=_int(claims["exp"]),
                workspace_id=_optional_str(claims, "ws"),
                scopes=tuple(_str(s) for s in _list(claims.get("scp", []))),
                session_id=_optional_str(claims, "sid"),
                client_ip=_optional_str(claims, "ip"),
                user_agent=_optional_str(claims, "ua"),
            )
        except (KeyError, TypeError):
            raise InvalidCallerAssertion("malformed caller assertion") from None
        if caller.audience != self._audience:
            raise InvalidCallerAssertion("caller assertion is for another service")
        now = self._clock.timestamp()
        if caller.expires_at - caller.issued_at > _MAX_LIFETIME_SECONDS:
            raise InvalidCallerAssertion("caller assertion lifetime is too long")
        if now >= caller.expires_at:
            raise InvalidCallerAssertion("caller assertion has expired")
        if now + _MAX_SKEW_SECONDS < caller.issued_at:
            raise InvalidCallerAssertion("caller assertion is not yet valid")
        return caller


def _bounded(text: str, limit: int) -> str:
    """The longest prefix of text whose JSON encoding fits in limit bytes.

    Counting encoded bytes, not characters: JSON escapes each non-ASCII character to 6 or 12
    bytes, and the whole assertion must stay under the verifier's size limit.
    """
    used = 0
    for index, char in enumerate(text):
        used += len(json.dumps(char)) - 2
        if used > limit:
            return text[:index]
    return text


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string claim")
    return value


def _optional_str(claims: dict[str, Any], name: str) -> str | None:
    return _str(claims[name]) if name in claims else None


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("expected a list claim")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer claim")
    return value


def require_caller() -> Caller:
    """The verified caller of this RPC (the interceptor guarantees one outside health)."""
    caller = current_caller.get()
    if caller is None:
        raise InvalidCallerAssertion()
    return caller


def require_service_caller() -> Caller:
    """The verified caller of this RPC, which must be a Palisade service (not a user or key)."""
    from palisade.common.errors import PermissionDenied  # local: errors imports nothing back

    caller = require_caller()
    if not caller.is_service:
        raise PermissionDenied("only Palisade services may call this method")
    return caller
