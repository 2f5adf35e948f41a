"""Thin gRPC adapter for the apikeys service: proto <-> domain, caller checks, nothing else."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from palisade.apikeys.access import actor_of, manager_of
from palisade.apikeys.client_text import client_ip
from palisade.apikeys.errors import InvalidExpiry, KeyNotFound
from palisade.apikeys.lifecycle import CreatedKey, KeyLifecycle
from palisade.apikeys.model import Actor, KeyEvent, KeyRecord, RateLimit, Usage
from palisade.apikeys.queries import KeyQueries
from palisade.apikeys.revocations import KeyRevocationNotice
from palisade.apikeys.tables import ID_CHARS
from palisade.apikeys.validation import key_settings
from palisade.common.caller import require_caller, require_service_caller
from palisade.common.clock import Clock
from palisade.common.errors import InvalidArgument, PermissionDenied
from palisade.common.revocation_feed import FeedEvent, RevocationFeed, serve_subscription
from palisade_api.apikeys.v1 import apikeys_pb2 as pb
from palisade_api.apikeys.v1 import apikeys_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
# The gateway is the only service that verifies keys and follows their revocation.
GATEWAY = "service:gateway"
AUTH = "service:auth"
# Why auth may ask for a person's keys to end (stored as each key's revoke reason).
_USER_REVOCATION_REASONS = frozenset(
    {"member_removed", "account_disabled", "account_deleted", "account_reclaimed"}
)
_USER_ID = re.compile(r"usr_[0-9a-f]{32}")
_WORKSPACE_ID = re.compile(r"ws_[0-9a-f]{32}")


def _timestamp(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def _datetime(ts: Timestamp) -> datetime | None:
    """The moment, or None where it is outside what datetime can hold (year 1 to 9999)."""
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None


def _expiry(request: pb.CreateApiKeyRequest) -> datetime | None:
    if not request.HasField("expires_at"):
        return None
    moment = _datetime(request.expires_at)
    if moment is None:
        raise InvalidExpiry()
    return moment


def _rate_limit(limit: RateLimit) -> pb.RateLimit:
    return pb.RateLimit(requests_per_minute=limit.requests_per_minute, burst=limit.burst)


def _gateway() -> None:
    caller = require_service_caller()
    if caller.principal != GATEWAY:
        raise PermissionDenied("only the gateway may call this method")


_KEY_ID = re.compile(r"key_[0-9a-f]{32}")


def _key_id(raw: str) -> str:
    """A key id as the service mints them; anything else (a NUL, which Postgres refuses in
    text, included) names no key."""
    if len(raw) > ID_CHARS or not _KEY_ID.fullmatch(raw):
        raise KeyNotFound()
    return raw


class ApiKeysServicer(apikeys_pb2_grpc.ApiKeysServiceServicer):
    def __init__(
        self,
        *,
        lifecycle: KeyLifecycle,
        queries: KeyQueries,
        revocations: RevocationFeed,
        clock: Clock,
        max_key_lifetime: timedelta,
    ) -> None:
        self._lifecycle = lifecycle
        self._queries = queries
        self._revocations = revocations
        self._clock = clock
        self._max_lifetime = max_key_lifetime

    def _api_key(self, record: KeyRecord) -> pb.ApiKey:
        message = pb.ApiKey(
            id=record.id,
            name=record.name,
            type=record.type,
            mode=record.mode,
            prefix=record.prefix,
            last4=record.last4,
            scopes=list(record.scopes),
            allowed_origins=list(record.allowed_origins),
            rate_limit=_rate_limit(record.rate_limit or self._queries.default_rate_limit),
            created_by=record.created_by,
            created_at=_timestamp(record.created_at),
            last_used_ip=record.last_used_ip or "",
            state=record.state(self._clock.now()),
            replaced_by=record.replaced_by or "",
        )
        if record.valid_until is not None:
            message.expires_at.CopyFrom(_timestamp(record.valid_until))
        if record.last_used_at is not None:
            message.last_used_at.CopyFrom(_timestamp(record.last_used_at))
        return message

    def _created(self, created: CreatedKey) -> pb.CreatedApiKey:
        return pb.CreatedApiKey(api_key=self._api_key(created.record), key=created.key)

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreatedApiKey:
        person = manager_of(require_caller())
        limit = request.rate_limit if request.HasField("rate_limit") else None
        settings = key_settings(
            name=request.name,
            key_type=request.type,
            mode=request.mode,
            scopes=list(request.scopes),
            allowed_origins=list(request.allowed_origins),
            expires_at=_expiry(request),
            rate_limit=(limit.requests_per_minute, limit.burst) if limit is not None else None,
            now=self._clock.now(),
            max_lifetime=self._max_lifetime,
        )
        return self._created(await self._lifecycle.create(person, settings))

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Context
    ) -> pb.ListApiKeysResponse:
        person = manager_of(require_caller())
        page = await self._queries.list(
            person.workspace_id, size=request.page_size, token=request.page_token
        )
        return pb.ListApiKeysResponse(
            api_keys=[self._api_key(r) for r in page.items], next_page_token=page.next_token
        )

    async def GetApiKey(self, request: pb.GetApiKeyRequest, context: Context) -> pb.ApiKey:
        person = manager_of(require_caller())
        return self._api_key(await self._queries.get(person.workspace_id, _key_id(request.id)))

    async def RotateApiKey(
        self, request: pb.RotateApiKeyRequest, context: Context
    ) -> pb.CreatedApiKey:
        person = manager_of(require_caller())
        overlap = request.overlap_seconds if request.HasField("overlap_seconds") else None
        created = await self._lifecycle.rotate(person, _key_id(request.id), overlap)
        return self._created(created)

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: Context
    ) -> pb.RevokeApiKeyResponse:
        person = manager_of(require_caller())
        await self._lifecycle.revoke(person, _key_id(request.id))
        return pb.RevokeApiKeyResponse()

    async def RevealApiKey(
        self, request: pb.RevealApiKeyRequest, context: Context
    ) -> pb.RevealedApiKey:
        person = manager_of(require_caller())
        return pb.RevealedApiKey(key=await self._lifecycle.reveal(person, _key_id(request.id)))

    async def ListApiKeyEvents(
        self, request: pb.ListApiKeyEventsRequest, context: Context
    ) -> pb.ListApiKeyEventsResponse:
        person = manager_of(require_caller())
        page = await self._queries.events(
            person.workspace_id,
            _key_id(request.id),
            size=request.page_size,
            token=request.page_token,
        )
        return pb.ListApiKeyEventsResponse(
            events=[_event(e) for e in page.items], next_page_token=page.next_token
        )

    async def ReportLeak(
        self, request: pb.ReportLeakRequest, context: Context
    ) -> pb.ReportLeakResponse:
        caller = require_caller()  # anyone (the gateway signs for anonymous clients)
        await self._lifecycle.report_leak(request.key, request.source, actor_of(caller))
        return pb.ReportLeakResponse()

    async def VerifyApiKey(
        self, request: pb.VerifyApiKeyRequest, context: Context
    ) -> pb.VerifiedApiKey:
        _gateway()
        verified = await self._queries.verify(request.key_hash)
        message = pb.VerifiedApiKey(
            key_id=verified.key_id,
            workspace_id=verified.workspace_id,
            type=verified.type,
            mode=verified.mode,
            scopes=list(verified.scopes),
            allowed_origins=list(verified.allowed_origins),
            rate_limit=_rate_limit(verified.rate_limit),
            created_by=verified.created_by,
            valid_until_is_expiry=verified.valid_until_is_expiry,
        )
        if verified.valid_until is not None:
            message.valid_until.CopyFrom(_timestamp(verified.valid_until))
        return message

    async def RecordKeyUsage(
        self, request: pb.RecordKeyUsageRequest, context: Context
    ) -> pb.RecordKeyUsageResponse:
        _gateway()
        usages = []
        for usage in request.usages:
            used_at = _datetime(usage.last_used_at) if usage.HasField("last_used_at") else None
            if used_at is not None:
                usages.append(Usage(usage.key_id, used_at, client_ip(usage.ip)))
        await self._queries.record_usage(usages)
        return pb.RecordKeyUsageResponse()

    async def RevokeKeysOfUser(
        self, request: pb.RevokeKeysOfUserRequest, context: Context
    ) -> pb.RevokeKeysOfUserResponse:
        caller = require_service_caller()
        if caller.principal != AUTH:
            raise PermissionDenied("only auth may call this method")
        if request.reason not in _USER_REVOCATION_REASONS:
            raise InvalidArgument(
                "reason is not one of " + ", ".join(sorted(_USER_REVOCATION_REASONS))
            )
        if not _USER_ID.fullmatch(request.user_id):
            raise InvalidArgument("user_id is not a user id")
        if request.workspace_id and not _WORKSPACE_ID.fullmatch(request.workspace_id):
            raise InvalidArgument("workspace_id is not a workspace id")
        revoked = await self._lifecycle.revoke_keys_of_user(
            request.user_id,
            request.workspace_id or None,
            actor=Actor(AUTH),
            reason=request.reason,
        )
        return pb.RevokeKeysOfUserResponse(revoked=revoked)

    async def WatchRevocations(
        self, request: pb.WatchKeyRevocationsRequest, context: Context
    ) -> AsyncIterator[pb.KeyRevocation]:
        _gateway()
        async for message in serve_subscription(
            self._revocations.subscribe(), context, _revocation_message
        ):
            yield message


def _revocation_message(event: FeedEvent) -> pb.KeyRevocation:
    if event.payload is None:
        return pb.KeyRevocation(sequence=event.sequence, heartbeat=True)
    notice = KeyRevocationNotice.from_payload(event.payload)
    return pb.KeyRevocation(
        key_hashes=list(notice.key_hashes),
        key_ids=list(notice.key_ids),
        reason=notice.reason,
        revoked_at=_timestamp(notice.revoked_at),
        sequence=event.sequence,
    )


def _event(event: KeyEvent) -> pb.ApiKeyEvent:
    return pb.ApiKeyEvent(
        type=event.type,
        occurred_at=_timestamp(event.occurred_at),
        actor=event.actor,
        ip=event.ip or "",
        device=event.device or "",
        source=event.source or "",
    )
