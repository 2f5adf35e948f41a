"""Endpoint management: the domain logic behind WebhooksService (no gRPC or SQL types here).

Every URL and secret goes through crypto before it is stored (sealing.py), and comes back
through it when read: with crypto away these answer UNAVAILABLE and nothing is written. Events
(webhook.created, .updated, .deleted, .secret_rotated, .test) name the endpoint and its URL's
origin only: never the path or query (receivers put tokens there) and never a secret.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient
from palisade.common.outbox import SecurityEvent
from palisade.common.page_tokens import PageTokens, scope
from palisade.webhooks import signing, validation
from palisade.webhooks.access import Manager
from palisade.webhooks.catalogue import TEST_EVENT_TYPE
from palisade.webhooks.egress.addresses import AddressPolicy
from palisade.webhooks.egress.resolver import Resolver
from palisade.webhooks.egress.urls import WebhookUrl, check_webhook_url
from palisade.webhooks.errors import (
    DeliveryNotFound,
    InvalidPageSize,
    TooManyWebhooks,
    WebhookNotFound,
)
from palisade.webhooks.model import (
    BY_USER,
    Created,
    Delivery,
    DeliveryPage,
    DeliveryTarget,
    Endpoint,
    Rotated,
    delivery_body,
    is_delivery_id,
    is_endpoint_id,
    new_endpoint_id,
    new_event_id,
)
from palisade.webhooks.sealing import field_aad
from palisade.webhooks.store import WebhookStore, new_delivery_values

# Each endpoint costs a row per matching event: a bound keeps one workspace's fan-out finite.
MAX_ENDPOINTS_PER_WORKSPACE = 100
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class Changes:
    """UpdateWebhook's fields; None: leave as it is."""

    url: str | None = None
    event_types: Sequence[str] | None = None
    description: str | None = None
    enabled: bool | None = None


def _event(
    kind: str,
    now: datetime,
    actor: str,
    workspace_id: str,
    details: Mapping[str, str | int | bool | None],
) -> SecurityEvent:
    return SecurityEvent(
        type=kind, occurred_at=now, actor=actor, workspace_id=workspace_id, details=details
    )


class EndpointService:
    def __init__(
        self,
        *,
        store: WebhookStore,
        crypto: CryptoClient,
        clock: Clock,
        policy: AddressPolicy,
        resolver: Resolver,
        page_tokens: PageTokens,
        url_resolve_seconds: float = 5.0,
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._clock = clock
        self._policy = policy
        self._resolver = resolver
        self._page_tokens = page_tokens
        self._resolve_seconds = url_resolve_seconds

    @property
    def store(self) -> WebhookStore:
        return self._store

    async def _checked_url(self, text: str) -> WebhookUrl:
        return await check_webhook_url(
            text,
            policy=self._policy,
            resolver=self._resolver,
            resolve_seconds=self._resolve_seconds,
        )

    async def _endpoints(self, rows: Sequence[Any]) -> list[Endpoint]:
        """Rows with their URLs opened, in one crypto call."""
        plain = await self._crypto.decrypt(
            [(r.url_ct, field_aad(r.workspace_id, r.id, "url")) for r in rows]
        )
        return [_endpoint(r, url.decode()) for r, url in zip(rows, plain, strict=True)]

    async def create(
        self, manager: Manager, *, url: str, event_types: Sequence[str], description: str
    ) -> Created:
        types = validation.event_types(event_types)
        text = validation.description(description)
        checked = await self._checked_url(url)
        endpoint_id = new_endpoint_id()
        secret = signing.generate_secret()
        ws = manager.workspace_id
        url_ct, secret_ct = await self._crypto.encrypt(
            [
                (checked.url.encode(), field_aad(ws, endpoint_id, "url")),
                (secret.encode(), field_aad(ws, endpoint_id, "secret")),
            ]
        )
        now = self._clock.now()
        origin = validation.origin_of(checked)
        values = {
            "id": endpoint_id,
            "workspace_id": ws,
            "url_ct": url_ct,
            "url_origin": origin,
            "event_types": _types_json(types),
            "description": text,
            "enabled": True,
            "disabled_reason": None,
            "disabled_at": None,
            "failing_since": None,
            "created_at": now,
            "updated_at": now,
        }
        details = {"webhook_id": endpoint_id, "url_origin": origin}
        event = _event("webhook.created", now, manager.actor, ws, details)
        created = await self._store.create(
            values, secret_ct, event, max_per_workspace=MAX_ENDPOINTS_PER_WORKSPACE
        )
        if not created:
            raise TooManyWebhooks()
        row = await self._store.endpoint_row(ws, endpoint_id)
        return Created(_endpoint(row, checked.url), secret)

    async def get(self, manager: Manager, endpoint_id: str) -> Endpoint:
        _known(endpoint_id)
        row = await self._store.endpoint_row(manager.workspace_id, endpoint_id)
        if row is None:
            raise WebhookNotFound()
        return (await self._endpoints([row]))[0]

    async def list_all(self, manager: Manager) -> list[Endpoint]:
        return await self._endpoints(await self._store.endpoint_rows(manager.workspace_id))

    async def update(self, manager: Manager, endpoint_id: str, changes: Changes) -> Endpoint:
        _known(endpoint_id)
        ws = manager.workspace_id
        values: dict[str, Any] = {}
        if changes.event_types is not None:
            values["event_types"] = _types_json(validation.event_types(changes.event_types))
        if changes.description is not None:
            values["description"] = validation.description(changes.description)
        if changes.enabled is True:
            values.update(enabled=True, disabled_reason=None, disabled_at=None, failing_since=None)
        elif changes.enabled is False:
            values.update(enabled=False, disabled_reason=BY_USER)
        if changes.url is not None:
            checked = await self._checked_url(changes.url)
            if await self._store.endpoint_row(ws, endpoint_id) is None:
                raise WebhookNotFound()  # before spending a crypto call on it
            (values["url_ct"],) = await self._crypto.encrypt(
                [(checked.url.encode(), field_aad(ws, endpoint_id, "url"))]
            )
            values["url_origin"] = validation.origin_of(checked)
        now = self._clock.now()
        if changes.enabled is False:
            values["disabled_at"] = now
        values["updated_at"] = now
        fields = ",".join(
            name
            for name in ("url", "event_types", "description", "enabled")
            if getattr(changes, name) is not None
        )
        details: dict[str, str | int | bool | None] = {"webhook_id": endpoint_id, "fields": fields}
        if "url_origin" in values:
            details["url_origin"] = values["url_origin"]
        event = _event("webhook.updated", now, manager.actor, ws, details)
        if not await self._store.update(ws, endpoint_id, values, event):
            raise WebhookNotFound()
        return await self.get(manager, endpoint_id)

    async def delete(self, manager: Manager, endpoint_id: str) -> None:
        _known(endpoint_id)
        ws = manager.workspace_id
        event = _event(
            "webhook.deleted", self._clock.now(), manager.actor, ws, {"webhook_id": endpoint_id}
        )
        if not await self._store.delete(ws, endpoint_id, event):
            raise WebhookNotFound()

    async def rotate_secret(
        self, manager: Manager, endpoint_id: str, *, overlap_seconds: int | None
    ) -> Rotated:
        _known(endpoint_id)
        overlap = validation.overlap_seconds(overlap_seconds)
        ws = manager.workspace_id
        if await self._store.endpoint_row(ws, endpoint_id) is None:
            raise WebhookNotFound()
        secret = signing.generate_secret()
        (secret_ct,) = await self._crypto.encrypt(
            [(secret.encode(), field_aad(ws, endpoint_id, "secret"))]
        )
        now = self._clock.now()
        expires = now + timedelta(seconds=overlap)
        details: dict[str, str | int | bool | None] = {
            "webhook_id": endpoint_id,
            "overlap_seconds": overlap,
        }
        event = _event("webhook.secret_rotated", now, manager.actor, ws, details)
        rotated = await self._store.rotate(
            ws,
            endpoint_id,
            secret_ct=secret_ct,
            now=now,
            previous_expires_at=expires,
            event=event,
        )
        if not rotated:
            raise WebhookNotFound()
        return Rotated(secret, expires)

    async def send_test(self, manager: Manager, endpoint_id: str) -> str:
        """Queues a webhook.test delivery for this endpoint alone; its event id.

        Nothing goes to the outbox: an event in the security log would come back through
        audit's stream to the intake and reach every endpoint of the workspace that
        subscribes to webhook.test, not this one alone."""
        _known(endpoint_id)
        ws = manager.workspace_id
        now = self._clock.now()
        event_id = new_event_id()
        body = delivery_body(
            TEST_EVENT_TYPE,
            now,
            {"webhookId": endpoint_id, "workspaceId": ws, "message": "A test event from Palisade."},
        )
        values = new_delivery_values(
            endpoint_id=endpoint_id,
            workspace_id=ws,
            event_id=event_id,
            event_type=TEST_EVENT_TYPE,
            payload=body,
            now=now,
        )
        if not await self._store.queue_test(ws, endpoint_id, values):
            raise WebhookNotFound()
        return event_id

    async def deliveries(
        self, manager: Manager, endpoint_id: str, *, page_size: int, page_token: str
    ) -> DeliveryPage:
        _known(endpoint_id)
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidPageSize()
        size = page_size or DEFAULT_PAGE_SIZE
        ws = manager.workspace_id
        bound = scope("ListDeliveries", ws, endpoint_id)
        after = self._page_tokens.read_str(page_token, bound) if page_token else None
        if await self._store.endpoint_row(ws, endpoint_id) is None:
            raise WebhookNotFound()
        rows = await self._store.delivery_rows(ws, endpoint_id, after=after, limit=size + 1)
        page = [_delivery(r) for r in rows[:size]]
        token = ""
        if len(rows) > size:
            last = page[-1]
            token = self._page_tokens.issue(bound, last.created_at, last.id)
        return DeliveryPage(page, token)

    async def retry_delivery(self, manager: Manager, endpoint_id: str, delivery_id: str) -> None:
        _known(endpoint_id)
        ws = manager.workspace_id
        if await self._store.endpoint_row(ws, endpoint_id) is None:
            raise WebhookNotFound()
        if not is_delivery_id(delivery_id):
            raise DeliveryNotFound()
        if not await self._store.retry(ws, endpoint_id, delivery_id, self._clock.now()):
            raise DeliveryNotFound()

    # --- for the delivery worker ---

    async def delivery_target(self, endpoint_id: str) -> DeliveryTarget | None:
        """The endpoint's decrypted URL and live secrets, newest first (expired previous ones
        left out), in one crypto call; None when the endpoint is gone."""
        found = await self._store.target_rows(endpoint_id, self._clock.now())
        if found is None:
            return None
        row, secret_cts = found
        ws = row.workspace_id
        plain = await self._crypto.decrypt(
            [(row.url_ct, field_aad(ws, row.id, "url"))]
            + [(ct, field_aad(ws, row.id, "secret")) for ct in secret_cts]
        )
        return DeliveryTarget(
            endpoint_id=row.id,
            workspace_id=ws,
            url=plain[0].decode(),
            secrets=tuple(p.decode() for p in plain[1:]),
            enabled=bool(row.enabled),
        )

    async def live_secrets(self, endpoint_id: str) -> list[str]:
        """The secrets that sign now, newest first ([] when the endpoint is gone)."""
        target = await self.delivery_target(endpoint_id)
        return list(target.secrets) if target else []

    async def disable(self, endpoint_id: str, reason: str) -> bool:
        """Disables an enabled endpoint ("gone", "failing"), emitting webhook.disabled; False
        when it was disabled already or is gone (so one caller alone emails the owners)."""
        now = self._clock.now()
        found = await self._store.target_rows(endpoint_id, now)
        if found is None:
            return False
        ws = found[0].workspace_id
        details = {"webhook_id": endpoint_id, "reason": reason}
        event = _event("webhook.disabled", now, "system", ws, details)
        return await self._store.disable(endpoint_id, reason, now, event)


def _known(endpoint_id: str) -> None:
    if not is_endpoint_id(endpoint_id):
        raise WebhookNotFound()


def _types_json(types: Sequence[str]) -> str:
    return json.dumps(list(types), separators=(",", ":"))


def _endpoint(row: Any, url: str) -> Endpoint:
    return Endpoint(
        id=row.id,
        workspace_id=row.workspace_id,
        url=url,
        url_origin=row.url_origin,
        event_types=tuple(json.loads(row.event_types)),
        description=row.description,
        enabled=bool(row.enabled),
        disabled_reason=row.disabled_reason,
        failing_since=row.failing_since,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row.id,
        endpoint_id=row.endpoint_id,
        event_id=row.event_id,
        event_type=row.event_type,
        state=row.state,
        attempts=row.attempts,
        last_status=row.last_status,
        last_error=row.last_error,
        last_attempt_at=row.last_attempt_at,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
    )
