"""The signed caller assertion: who is calling, attested by the gateway or a peer service.

Every internal gRPC call carries one in the `x-palisade-caller` metadata entry. The format is

    v2.<issuer>.<kid>.<base64url(JSON claims)>.<base64url(HMAC-SHA256(key, signing input))>

where the signing input is everything before the last dot, and the key is the one of the
issuer->audience edge (palisade.common.edges) with that kid. A service holds only the keys of
the edges it is on, so it can sign only as itself, and only to the services it calls; HMAC keeps
verification in the microsecond range on every call. The claims bind the assertion to one
audience, one full gRPC method, a short lifetime, a request id and a random assertion id (jti)
that each verifier accepts once. Only a delegating edge's issuer (the gateway) may assert
principals other than itself. Services trust identity only from a verified assertion, never
from other metadata.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hashlib
import heapq
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from palisade.common.clock import Clock
from palisade.common.edge_keys import KeySource
from palisade.common.errors import Unauthenticated


class InvalidCallerAssertion(Unauthenticated):
    """The calling service's assertion is missing or bad: a fault between services (or an
    attacker inside the network), never the end user's, so the gateway does not pass it on."""

    code = "caller_assertion_invalid"


CALLER_METADATA_KEY = "x-palisade-caller"
REQUEST_ID_METADATA_KEY = "x-request-id"
_VERSION = "v2"
# Tolerated clock difference between signer and verifier.
_MAX_SKEW_SECONDS = 5
# No assertion may claim to live longer than this, whatever its signer asked for.
_MAX_LIFETIME_SECONDS = 300
_MAX_ASSERTION_LENGTH = 4096
_MAX_USER_AGENT_CLAIM = 1024  # bytes of JSON
_MAX_JTI_LENGTH = 64
# Assertion ids remembered per verifier (about 200 bytes each). When full, the soonest-expiring
# are forgotten and anything expiring no later is refused, so memory stays bounded and a
# forgotten id can never be replayed: under overload only late-arriving assertions suffer.
DEFAULT_REPLAY_CACHE_ENTRIES = 100_000


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
    method: str = ""  # the full gRPC method the assertion was signed for
    assertion_id: str = ""
    # A person's role in the workspace, and when their session logged in (unix seconds): what
    # services need for "owner/admin only" and "recent auth" without asking auth again.
    role: str | None = None
    authenticated_at: int | None = None
    # An API key's mode ("live" or "test"), so resource services can mark test data, and the
    # person who created it (the user whose rate limit and permissions the key acts under).
    key_mode: str | None = None
    acting_user_id: str | None = None
    # An API key's type ("publishable" or "secret"): a publishable key lives in a visitor's
    # browser, so what it writes is the visitor's (a chat message's sender), not the workspace's.
    key_type: str | None = None

    @property
    def is_service(self) -> bool:
        return self.principal.startswith("service:")


current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "palisade_current_caller", default=None
)


class NoEdgeKey(Exception):
    """This service has no (active) key for the edge to that audience: a deployment fault."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AssertionSigner:
    """Mints assertions for calls this process makes (gateway: for users; services: as itself).

    Sign once per call attempt: each assertion has its own id and is accepted once.
    """

    def __init__(self, *, keys: KeySource, clock: Clock, ttl_seconds: int) -> None:
        self._keys = keys
        self._issuer = keys.service
        self._clock = clock
        self._ttl = min(ttl_seconds, _MAX_LIFETIME_SECONDS)

    @property
    def issuer(self) -> str:
        return self._issuer

    def require_edge(self, audience: str) -> None:
        """Raises NoEdgeKey unless this service can sign for audience now (checked at start)."""
        edge = self._keys.current.signing.get(audience)
        if edge is None or edge.signing_key(self._clock.timestamp()) is None:
            raise NoEdgeKey(f"{self._issuer} holds no active key for the edge to {audience}")

    def sign(
        self,
        *,
        audience: str,
        method: str,
        principal: str,
        request_id: str,
        workspace_id: str | None = None,
        scopes: Sequence[str] = (),
        session_id: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
        role: str | None = None,
        authenticated_at: int | None = None,
        key_mode: str | None = None,
        acting_user_id: str | None = None,
        key_type: str | None = None,
    ) -> str:
        now_exact = self._clock.timestamp()
        edge = self._keys.current.signing.get(audience)
        key = edge.signing_key(now_exact) if edge is not None else None
        if key is None:
            raise NoEdgeKey(f"{self._issuer} holds no active key for the edge to {audience}")
        now = int(now_exact)
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": audience,
            "mth": method,
            "sub": principal,
            "rid": request_id,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + self._ttl,
        }
        if workspace_id is not None:
            claims["ws"] = workspace_id
        if scopes:
            claims["scp"] = list(scopes)
        # A client-chosen User-Agent must not push the assertion past the verifier's limit.
        agent = _bounded(user_agent, _MAX_USER_AGENT_CLAIM) if user_agent is not None else None
        optional = {
            "sid": session_id,
            "ip": client_ip,
            "ua": agent,
            "rol": role,
            "aat": authenticated_at,
            "kmd": key_mode,
            "usr": acting_user_id,
            "ktp": key_type,
        }
        claims.update({k: v for k, v in optional.items() if v is not None})
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{_VERSION}.{self._issuer}.{key.kid}.{payload}"
        mac = hmac.new(key.secret, signing_input.encode("ascii"), hashlib.sha256)
        return f"{signing_input}.{_b64(mac.digest())}"


class ReplayCache:
    """Assertion ids seen and not yet expired, in bounded memory (one per verifier/replica)."""

    def __init__(self, capacity: int = DEFAULT_REPLAY_CACHE_ENTRIES) -> None:
        if capacity < 1:
            raise ValueError("the replay cache needs room for at least one id")
        self._capacity = capacity
        self._seen: dict[str, int] = {}
        self._expiries: list[tuple[int, str]] = []  # a heap, soonest first
        # Every id forgotten to make room expired no later than this: refuse those.
        self._horizon = 0

    def __len__(self) -> int:
        return len(self._seen)

    def first_use(self, jti: str, expires_at: int, now: float) -> bool:
        """Records jti; False if it was seen before (or may have been, and was forgotten)."""
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            del self._seen[heapq.heappop(expiries)[1]]
        if jti in self._seen or expires_at <= self._horizon:
            return False
        while len(self._seen) >= self._capacity:
            forgotten, old = heapq.heappop(expiries)
            del self._seen[old]
            self._horizon = max(self._horizon, forgotten)
        if expires_at <= self._horizon:
            return False
        self._seen[jti] = expires_at
        heapq.heappush(expiries, (expires_at, jti))
        return True


class AssertionVerifier:
    """Checks assertions addressed to one service; raises Unauthenticated on any defect."""

    def __init__(
        self,
        *,
        keys: KeySource,
        clock: Clock,
        replay_cache_entries: int = DEFAULT_REPLAY_CACHE_ENTRIES,
    ) -> None:
        self._keys = keys
        self._audience = keys.service
        self._clock = clock
        self._replays = ReplayCache(replay_cache_entries)

    def verify(self, assertion: str | None, *, method: str) -> Caller:
        if not assertion or len(assertion) > _MAX_ASSERTION_LENGTH:
            raise InvalidCallerAssertion("missing caller assertion")
        if not assertion.isascii():  # what follows encodes and compares as ASCII
            raise InvalidCallerAssertion("malformed caller assertion")
        signing_input, _, signature = assertion.rpartition(".")
        parts = signing_input.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            raise InvalidCallerAssertion("malformed caller assertion")
        _, issuer, kid, payload = parts
        trusted = self._keys.current.verifying.get(issuer)
        if trusted is None:
            raise InvalidCallerAssertion("caller assertion from an issuer not allowed here")
        edge, edge_keys = trusted
        key = edge_keys.by_kid.get(kid)
        if key is None:  # perhaps just rotated in: look at the file once more
            trusted = self._keys.refresh().verifying.get(issuer)
            key = trusted[1].by_kid.get(kid) if trusted is not None else None
            if key is None:
                raise InvalidCallerAssertion("caller assertion signed with an unknown key")
        expected = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256)
        # Compare the canonical encoding, not decoded bytes: base64's last character has
        # unused bits, and accepting their variants would make assertions malleable.
        if not hmac.compare_digest(_b64(expected.digest()), signature):
            raise InvalidCallerAssertion("caller assertion signature is invalid")
        try:
            claims = json.loads(_unb64(payload))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise InvalidCallerAssertion("malformed caller assertion") from None
        caller = self._check_claims(claims)
        if caller.issuer != issuer:
            raise InvalidCallerAssertion("malformed caller assertion")
        if caller.method != method:
            raise InvalidCallerAssertion("caller assertion is for another method")
        if not edge.allows_principal(caller.principal):
            raise InvalidCallerAssertion("the issuer may not assert this principal")
        if not self._replays.first_use(
            caller.assertion_id, caller.expires_at, self._clock.timestamp()
        ):
            raise InvalidCallerAssertion("caller assertion was already used")
        return caller

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
                method=_str(claims["mth"]),
                assertion_id=_str(claims["jti"]),
                role=_optional_str(claims, "rol"),
                authenticated_at=_int(claims["aat"]) if "aat" in claims else None,
                key_mode=_optional_str(claims, "kmd"),
                acting_user_id=_optional_str(claims, "usr"),
                key_type=_optional_str(claims, "ktp"),
            )
        except (KeyError, TypeError):
            raise InvalidCallerAssertion("malformed caller assertion") from None
        if not caller.assertion_id or len(caller.assertion_id) > _MAX_JTI_LENGTH:
            raise InvalidCallerAssertion("malformed caller assertion")
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
    if len(json.dumps(text)) - 2 <= limit:  # the usual case, in one call (it is per request)
        return text
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
