"""`GET /v1/whoami`: who the bearer token stands for, answered by the gateway itself.

It needs nothing but the validated grant, so on a token-cache hit it makes no gRPC call at all:
the cheapest authenticated request there is (P2 measures it). API keys may ask too (who a key
is: its id, workspace, type, mode and scopes), answered from the key cache: P4 measures that.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache

from palisade.gateway.access import KeyGrant
from palisade.gateway.openapi import LocalOperation, error_responses
from palisade.gateway.token_cache import Grant
from palisade_api.common.v1 import access_pb2

PATH = "/v1/whoami"
# Declared like a proto route's rule, and checked by the same functions: any signed-in person.
# Publishable keys too (a widget may check its own key), though no CORS is answered for it.
ACCESS = access_pb2.AccessRule(access=access_pb2.ACCESS_USER, api_keys=True, publishable_keys=True)


# Built once: json.dumps with separators makes a new encoder per call (this is the hot path
# that P2 measures; time.strftime is likewise a few times cheaper than datetime's).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


# Made once per grant (a token's grant never changes while it is cached): the body holds no
# PII, only the grant's own ids, role and expiry, and is served only for a grant the token
# cache has just answered with, so a revoked token never reaches it.
@lru_cache(maxsize=65_536)
def whoami_body(grant: Grant) -> bytes:
    """The answer's JSON: lowerCamelCase like the proto routes, expiresAt in RFC 3339 (UTC)."""
    return _ENCODER.encode(
        {
            "userId": grant.user_id,
            "workspaceId": grant.workspace_id,
            "role": grant.role,
            "sessionId": grant.session_id,
            "expiresAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(grant.expires_at)),
        }
    ).encode()


def key_body(key: KeyGrant) -> bytes:
    """The same answer for an API key: who the key is, never the key."""
    return _ENCODER.encode(
        {
            "apiKeyId": key.key_id,
            "workspaceId": key.workspace_id,
            "type": "publishable" if key.publishable else "secret",
            "mode": key.mode,
            "scopes": sorted(key.scopes),
        }
    ).encode()


_SCHEMA = {
    "type": "object",
    "description": "a person (userId, role, sessionId, expiresAt) or an API key (apiKeyId, "
    "type, mode, scopes)",
    "required": ["workspaceId"],
    "properties": {
        "apiKeyId": {"type": "string"},
        "type": {"type": "string", "enum": ["secret", "publishable"]},
        "mode": {"type": "string", "enum": ["live", "test"]},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "userId": {"type": "string"},
        "workspaceId": {"type": "string"},
        "role": {"type": "string"},
        "sessionId": {"type": "string"},
        "expiresAt": {
            "type": "string",
            "format": "date-time",
            "description": "when the access token expires",
        },
    },
}

OPERATION = LocalOperation(
    method="get",
    path=PATH,
    operation={
        "operationId": "WhoAmI",
        "summary": "Who the bearer access token or API key stands for (answered by the gateway)",
        "security": [{"bearer": []}],
        "responses": {
            "200": {
                "description": "Success",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/WhoAmI"}}
                },
            },
            # 400: a query string or a body; 403: a publishable key from a foreign origin;
            # 429: rate limited; 503: a backend unreachable on a cache miss.
            **error_responses(("400", "401", "403", "429", "503")),
        },
    },
    schemas={"WhoAmI": _SCHEMA},
)
