"""Who may use a route: the access rule from the proto, applied to the verified caller.

Credentials are told apart by their prefix: access tokens (`plsd_at_`) stand for people, API
keys (`pk_…`/`sk_…`) for integrations. API-key verification is an interface here;
palisade.gateway.key_auth implements it over the apikeys service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from palisade.gateway.problems import EMAIL_NOT_VERIFIED
from palisade.gateway.token_cache import Grant
from palisade_api.common.v1 import access_pb2

API_KEY_PREFIXES = ("pk_live_", "pk_test_", "sk_live_", "sk_test_")
PUBLISHABLE_PREFIX = "pk_"
# 403 code for a publishable key on a route for secret keys (a code, not a secret).
SECRET_KEY_REQUIRED = "secret_key_required"  # noqa: S105


class Forbidden(Exception):
    """A known caller that may not use this route (403, with a stable code)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class KeyGrant:
    """What a verified API key stands for."""

    key_id: str
    workspace_id: str
    scopes: frozenset[str]
    publishable: bool
    allowed_origins: tuple[str, ...]
    mode: str = "live"  # "live" | "test": travels in the caller assertion
    created_by: str = ""  # the person whose user rate limit the key also spends
    requests_per_minute: int = 0
    burst: int = 0
    # When the key stops working (Unix seconds; inf: never), and whether that moment is its
    # expiry (answer key_expired) or the end of a rotation overlap (invalid_api_key).
    valid_until: float = float("inf")
    valid_until_is_expiry: bool = False


class ApiKeyVerifier(Protocol):
    async def verify(self, key: str, *, origin: str | None, client_ip: str = "") -> KeyGrant:
        """The key's grant; raises for unknown, revoked, expired or origin-mismatched keys."""
        ...

    def forget_workspace(self, workspace_id: str) -> None:
        """Drops a workspace's cached keys (after a key change through this replica)."""
        ...


def is_api_key(credential: str) -> bool:
    return credential.startswith(API_KEY_PREFIXES)


def check_person(rule: access_pb2.AccessRule, grant: Grant) -> None:
    """Raises Forbidden unless the signed-in user's role is one the route allows and the
    route's action is not one their account may not perform before verifying its address."""
    if rule.roles and grant.role not in rule.roles:
        raise Forbidden("insufficient_role", "your role in this workspace does not allow this")
    if rule.restricted_action and rule.restricted_action in grant.restrictions:
        raise Forbidden(EMAIL_NOT_VERIFIED, "verify your email address before you do this")


def check_key_allowed(rule: access_pb2.AccessRule, credential: str = "") -> None:
    """Raises Forbidden if the route is for people only, or for secret keys only and the
    credential is a publishable key (checked before any key lookup: the prefix is enough, and
    a made-up key learns nothing from it that the route's documentation does not say)."""
    if not rule.api_keys:
        raise Forbidden("people_only", "this route is for signed-in people, not API keys")
    if not rule.publishable_keys and credential.startswith(PUBLISHABLE_PREFIX):
        raise Forbidden(SECRET_KEY_REQUIRED, "this route needs a secret key (sk_…), or a person")


def check_key(rule: access_pb2.AccessRule, key: KeyGrant) -> None:
    """Raises Forbidden unless the route admits this kind of key and the key holds the route's
    scope."""
    check_key_allowed(rule)
    if key.publishable and not rule.publishable_keys:
        raise Forbidden(SECRET_KEY_REQUIRED, "this route needs a secret key (sk_…), or a person")
    if rule.scope and rule.scope not in key.scopes:
        raise Forbidden("insufficient_scope", f"this key lacks the {rule.scope} scope")
