"""Thin gRPC adapter for WebhooksService: proto <-> domain, the caller check, nothing else."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from palisade.webhooks.access import current_manager
from palisade.webhooks.catalogue import EVENT_TYPES
from palisade.webhooks.model import Delivery, Endpoint
from palisade.webhooks.service import Changes, EndpointService
from palisade_api.webhooks.v1 import webhooks_pb2 as pb
from palisade_api.webhooks.v1 import webhooks_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def _ts(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def webhook_proto(endpoint: Endpoint) -> pb.Webhook:
    return pb.Webhook(
        id=endpoint.id,
        url=endpoint.url,
        event_types=list(endpoint.event_types),
        description=endpoint.description,
        enabled=endpoint.enabled,
        disabled_reason="" if endpoint.enabled else (endpoint.disabled_reason or ""),
        created_at=_ts(endpoint.created_at),
    )


def delivery_proto(delivery: Delivery) -> pb.Delivery:
    return pb.Delivery(
        id=delivery.id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        attempts=delivery.attempts,
        state=delivery.state,
        last_status=delivery.last_status or 0,
        last_error=delivery.last_error or "",
        last_attempt_at=_ts(delivery.last_attempt_at),
        next_attempt_at=_ts(delivery.next_attempt_at),
        created_at=_ts(delivery.created_at),
    )


_EVENT_TYPES = pb.ListWebhookEventTypesResponse(
    event_types=[
        pb.WebhookEventType(type=t.type, description=t.description) for t in EVENT_TYPES.values()
    ]
)


class WebhooksServicer(webhooks_pb2_grpc.WebhooksServiceServicer):
    def __init__(self, *, service: EndpointService) -> None:
        self._service = service

    async def ListWebhookEventTypes(
        self, request: pb.ListWebhookEventTypesRequest, context: Context
    ) -> pb.ListWebhookEventTypesResponse:
        current_manager()
        return _EVENT_TYPES

    async def CreateWebhook(
        self, request: pb.CreateWebhookRequest, context: Context
    ) -> pb.CreatedWebhook:
        created = await self._service.create(
            current_manager(),
            url=request.url,
            event_types=list(request.event_types),
            description=request.description,
        )
        return pb.CreatedWebhook(webhook=webhook_proto(created.endpoint), secret=created.secret)

    async def ListWebhooks(
        self, request: pb.ListWebhooksRequest, context: Context
    ) -> pb.ListWebhooksResponse:
        found = await self._service.list_all(current_manager())
        return pb.ListWebhooksResponse(webhooks=[webhook_proto(e) for e in found])

    async def GetWebhook(self, request: pb.GetWebhookRequest, context: Context) -> pb.Webhook:
        return webhook_proto(await self._service.get(current_manager(), request.id))

    async def UpdateWebhook(self, request: pb.UpdateWebhookRequest, context: Context) -> pb.Webhook:
        changes = Changes(
            url=request.url if request.HasField("url") else None,
            event_types=list(request.event_types) if request.event_types else None,
            description=request.description if request.HasField("description") else None,
            enabled=request.enabled if request.HasField("enabled") else None,
        )
        return webhook_proto(await self._service.update(current_manager(), request.id, changes))

    async def DeleteWebhook(
        self, request: pb.DeleteWebhookRequest, context: Context
    ) -> pb.DeleteWebhookResponse:
        await self._service.delete(current_manager(), request.id)
        return pb.DeleteWebhookResponse()

    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: Context
    ) -> pb.RotatedWebhookSecret:
        overlap = request.overlap_seconds if request.HasField("overlap_seconds") else None
        rotated = await self._service.rotate_secret(
            current_manager(), request.id, overlap_seconds=overlap
        )
        return pb.RotatedWebhookSecret(
            secret=rotated.secret, previous_expires_at=_ts(rotated.previous_expires_at)
        )

    async def SendTestEvent(
        self, request: pb.SendTestEventRequest, context: Context
    ) -> pb.SendTestEventResponse:
        event_id = await self._service.send_test(current_manager(), request.id)
        return pb.SendTestEventResponse(event_id=event_id)

    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: Context
    ) -> pb.ListDeliveriesResponse:
        page = await self._service.deliveries(
            current_manager(),
            request.id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListDeliveriesResponse(
            deliveries=[delivery_proto(d) for d in page.deliveries],
            next_page_token=page.next_page_token,
        )

    async def RetryDelivery(
        self, request: pb.RetryDeliveryRequest, context: Context
    ) -> pb.RetryDeliveryResponse:
        await self._service.retry_delivery(current_manager(), request.id, request.delivery_id)
        return pb.RetryDeliveryResponse()
