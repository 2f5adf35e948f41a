"""The webhooks service's exceptions: each has a status, a stable code and a safe message.

Messages never echo a URL (it may carry a receiver's token) or a secret, and never say whether
an endpoint of another workspace exists: those are all webhook_not_found. The URL refusals
(invalid_url, url_not_allowed) are the egress package's (palisade.webhooks.egress.errors).
"""

from __future__ import annotations

import grpc

from palisade.common.errors import InvalidArgument, NotFound, PalisadeError, PermissionDenied
from palisade.webhooks.catalogue import MAX_EVENT_TYPES


class UnknownEventType(InvalidArgument):
    code = "unknown_event_type"
    default_message = "event_types holds a type that is not in /v1/webhook-event-types"


class InvalidEventTypes(InvalidArgument):
    code = "invalid_event_types"
    default_message = f"event_types must list 1 to {MAX_EVENT_TYPES} event types"


class InvalidDescription(InvalidArgument):
    code = "invalid_description"
    default_message = "description must be at most 500 characters of text"


class InvalidOverlap(InvalidArgument):
    code = "invalid_overlap"
    default_message = "overlap_seconds must be 0 to 604800 (7 days)"


class InvalidPageSize(InvalidArgument):
    code = "invalid_page_size"
    default_message = "page_size must be 0 to 100"


class InvalidPageToken(InvalidArgument):
    code = "invalid_page_token"
    default_message = "page_token is not one this list issued"


class TooManyWebhooks(PalisadeError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "webhook_limit_reached"
    default_message = "a workspace has at most 100 webhook endpoints; delete one first"


class WebhookNotFound(NotFound):
    code = "webhook_not_found"
    default_message = "no such webhook"


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"
    default_message = "no such delivery"


class NotAWorkspaceCaller(PermissionDenied):
    code = "workspace_required"
    default_message = "this method needs a person or an API key of a workspace"


class RoleRequired(PermissionDenied):
    code = "permission_denied"
    default_message = "only workspace owners and admins manage webhooks"


class InsufficientScope(PermissionDenied):
    code = "insufficient_scope"
    default_message = "this API key lacks the webhooks:manage scope"


class SecretKeyRequired(PermissionDenied):
    code = "secret_key_required"
    default_message = "publishable keys may not manage webhooks"


class KeyClaimsMissing(PermissionDenied):
    code = "key_claims_missing"
    default_message = "this API key's caller assertion lacks its key type or mode"


class LiveKeyRequired(PermissionDenied):
    code = "live_key_required"
    default_message = "test-mode keys may not manage webhooks (endpoints receive live events)"
