"""The OpenAPI 3.1 `webhooks` section: what a workspace's endpoint receives, one entry per
event type it may subscribe to (palisade.common.event_catalogue, the same list the webhooks
service publishes at /v1/webhook-event-types).

Every delivery is an HTTP POST signed per Standard Webhooks 1.0; its JSON body is
`{type, timestamp, data}`. `data` is the security log's event without the client's IP, user
agent, device or location (the webhooks service never reads those: a receiver's logs are out of
reach of crypto-shredding), except for `webhook.test`, whose data names the endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from palisade.common.event_catalogue import TEST_EVENT_TYPE, PublishedEventType

EVENT_DATA = "WebhookEventData"
TEST_DATA = "WebhookTestEventData"

SCHEMAS: dict[str, Any] = {
    EVENT_DATA: {
        "type": "object",
        "required": ["id", "type", "occurredAt", "actor", "subject", "outcome", "details"],
        "properties": {
            "id": {"type": "string", "description": "the event's id, also the webhook-id"},
            "type": {"type": "string"},
            "occurredAt": {"type": "string", "format": "date-time"},
            "actor": {
                "type": "object",
                "required": ["type", "id"],
                "properties": {
                    "type": {"type": "string", "enum": ["user", "api_key", "system"]},
                    "id": {"type": "string"},
                },
            },
            "subject": {
                "type": "string",
                "description": "what the event is about, e.g. user:usr_…, visitor:vis_…",
            },
            "outcome": {"type": "string"},
            "reason": {"type": "string"},
            "details": {
                "type": "object",
                "description": "ids and flags of the event type; never secrets or PII",
                "additionalProperties": {"type": "string"},
            },
        },
    },
    TEST_DATA: {
        "type": "object",
        "required": ["webhookId", "workspaceId", "message"],
        "properties": {
            "webhookId": {"type": "string"},
            "workspaceId": {"type": "string"},
            "message": {"type": "string"},
        },
    },
}

_HEADERS = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "description": "the event's id: the same on every retry, so receivers can deduplicate",
        "schema": {"type": "string"},
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "description": "Unix seconds of this attempt; refuse ones too far from your clock",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "description": (
            "space-separated `v1,<base64 HMAC-SHA256>` over `<webhook-id>.<webhook-timestamp>."
            "<body>` with each live secret (two during a rotation's overlap); verify with any "
            "Standard Webhooks library"
        ),
        "schema": {"type": "string"},
    },
]

_RESPONSES = {
    "2XX": {"description": "Received: the delivery succeeded."},
    "410": {"description": "Gone: the endpoint is disabled at once and gets nothing more."},
    "default": {
        "description": (
            "Anything else, a redirect, or no answer within 15 s: retried with backoff for "
            "about a day (Retry-After is honoured); an endpoint failing everything for 5 days "
            "is disabled and the workspace's owners are emailed."
        )
    },
}


def _entry(event: PublishedEventType) -> dict[str, Any]:
    data = TEST_DATA if event.type == TEST_EVENT_TYPE else EVENT_DATA
    body = {
        "type": "object",
        "required": ["type", "timestamp", "data"],
        "properties": {
            "type": {"const": event.type},
            "timestamp": {"type": "string", "format": "date-time"},
            "data": {"$ref": f"#/components/schemas/{data}"},
        },
    }
    return {
        "post": {
            "operationId": "webhook_" + event.type.replace(".", "_"),
            "summary": event.description,
            "parameters": _HEADERS,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": _RESPONSES,
        }
    }


def webhooks_section(types: Mapping[str, PublishedEventType]) -> dict[str, Any]:
    return {name: _entry(event) for name, event in types.items()}
