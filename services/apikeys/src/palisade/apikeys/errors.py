"""The apikeys service's exceptions: each has a status, a stable code and a safe message.

Messages never contain a key, and never say whether a key of another workspace exists.
"""

from __future__ import annotations

import grpc

from palisade.common.errors import (
    InvalidArgument,
    NotFound,
    PalisadeError,
    PermissionDenied,
    Unauthenticated,
)


class InvalidName(InvalidArgument):
    code = "invalid_name"
    default_message = "name must be 1 to 100 characters"


class InvalidType(InvalidArgument):
    code = "invalid_type"
    default_message = 'type must be "secret" or "publishable"'


class InvalidMode(InvalidArgument):
    code = "invalid_mode"
    default_message = 'mode must be "live" or "test"'


class InvalidScope(InvalidArgument):
    code = "invalid_scope"
    default_message = "scopes must be a non-empty list of known scopes"


class ScopeNotAllowed(InvalidArgument):
    code = "scope_not_allowed"
    default_message = "publishable keys may hold only visitors:write and chats:write"


class OriginsRequired(InvalidArgument):
    code = "origins_required"
    default_message = "publishable keys need at least one allowed origin"


class InvalidOrigin(InvalidArgument):
    code = "invalid_origin"
    default_message = "each allowed origin must be scheme://host[:port] (http or https), at most 20"


class InvalidExpiry(InvalidArgument):
    code = "invalid_expiry"
    default_message = "expiresAt must be in the future and within the longest key lifetime"


class InvalidRateLimit(InvalidArgument):
    code = "invalid_rate_limit"
    default_message = "rateLimit needs requestsPerMinute 1..100000 and burst 1..10000"


class InvalidOverlap(InvalidArgument):
    code = "invalid_overlap"
    default_message = "overlapSeconds must be 0 to 604800"


class InvalidPageToken(InvalidArgument):
    code = "invalid_page_token"
    default_message = "the page token is invalid"


class InvalidUsage(InvalidArgument):
    code = "invalid_usage"
    default_message = "too many usages in one batch"


class NotSignedIn(Unauthenticated):
    code = "unauthenticated"
    default_message = "this request needs a signed-in user"


class RoleRequired(PermissionDenied):
    code = "permission_denied"
    default_message = "only workspace owners and admins manage API keys"


class RecentAuthRequired(PermissionDenied):
    """The same code auth uses, so clients handle both alike (sign in again)."""

    code = "recent_auth_required"
    default_message = "sign in again to make this change"


class NotRevealable(PermissionDenied):
    code = "not_revealable"
    default_message = "only test-mode secret keys can be shown again"


class KeyNotFound(NotFound):
    code = "not_found"
    default_message = "API key not found"


class KeyNotActive(PalisadeError):
    # A conflict with the key's current state: 409 at the gateway.
    status = grpc.StatusCode.ABORTED
    code = "key_not_active"
    default_message = "the key is not active (revoked, expired or already rotated)"


class InvalidApiKey(Unauthenticated):
    code = "invalid_api_key"
    default_message = "the API key is invalid or has been revoked"


class KeyExpired(Unauthenticated):
    code = "key_expired"
    default_message = "the API key has expired"
