"""Reading keys: a workspace's list, one key, its history, and the gateway's verification.

A key of another workspace is simply not found (never "forbidden"), so ids reveal nothing
across workspaces. VerifyApiKey is one statement on the hot-read path, no transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from palisade.apikeys.errors import InvalidApiKey, InvalidUsage, KeyExpired, KeyNotFound
from palisade.apikeys.history_seal import HistorySeal
from palisade.apikeys.model import (
    KeyEvent,
    KeyRecord,
    RateLimit,
    Usage,
    Verified,
    expired_event,
    valid_until,
)
from palisade.apikeys.paging import (
    decode_event_position,
    decode_key_position,
    encode,
    page_size,
)
from palisade.apikeys.store import ApiKeyStore, rate_limit_of
from palisade.apikeys.tables import ID_CHARS
from palisade.common.clock import Clock

_HASH_BYTES = 32
# Usage times ahead of our clock by more than this are dropped (a gateway's clock gone wrong
# must not pin last_used_at in the future, where newer real uses could never replace it).
_MAX_USAGE_SKEW_SECONDS = 300


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_token: str


class KeyQueries:
    def __init__(
        self,
        *,
        store: ApiKeyStore,
        seal: HistorySeal,
        clock: Clock,
        default_rate_limit: RateLimit,
        max_usages: int,
    ) -> None:
        self._store = store
        self._seal = seal
        self._clock = clock
        self._default_rate_limit = default_rate_limit
        self._max_usages = max_usages

    @property
    def default_rate_limit(self) -> RateLimit:
        return self._default_rate_limit

    async def list(self, workspace_id: str, *, size: int, token: str) -> Page[KeyRecord]:
        before = decode_key_position(token)
        limit = page_size(size)
        async with self._store.transaction() as tx:
            rows = await tx.keys(workspace_id, before=before, limit=limit + 1)
        items = rows[:limit]
        more = len(rows) > limit
        return Page(items, encode(items[-1].created_at, items[-1].id) if more else "")

    async def get(self, workspace_id: str, key_id: str) -> KeyRecord:
        if not key_id or len(key_id) > ID_CHARS:
            raise KeyNotFound()
        async with self._store.transaction() as tx:
            record = await tx.key(key_id, workspace_id)
        if record is None:
            raise KeyNotFound()
        return record

    async def events(
        self, workspace_id: str, key_id: str, *, size: int, token: str
    ) -> Page[KeyEvent]:
        """The key's history newest first, with `expired` where its validity ran out."""
        before = decode_event_position(token)
        limit = page_size(size)
        if not key_id or len(key_id) > ID_CHARS:
            raise KeyNotFound()
        async with self._store.transaction() as tx:
            record = await tx.key(key_id, workspace_id)
            if record is None:
                raise KeyNotFound()
            stored = await tx.events(key_id, before=before, limit=limit + 1)
            # Until the expiry recorder has stored it, the end of validity is shown as it is.
            recorded = await tx.has_event(key_id, "expired")
        # People's clients open in one Decrypt for the page (an erased person's: none).
        found = await self._seal.open(workspace_id, key_id, stored)
        expired = None if recorded else expired_event(record, self._clock.now())
        # Synthesized events sort by (time, id 0): after stored events of the same moment.
        if expired is not None and (before is None or (expired.occurred_at, expired.id) < before):
            found.append(expired)
        found.sort(key=lambda e: (e.occurred_at, e.id), reverse=True)
        items = found[:limit]
        more = len(found) > limit
        return Page(items, encode(items[-1].occurred_at, items[-1].id) if more else "")

    async def verify(self, key_hash: bytes) -> Verified:
        if len(key_hash) != _HASH_BYTES:
            raise InvalidApiKey()
        row = await self._store.verify_row(key_hash)
        if row is None:
            raise InvalidApiKey()
        (
            key_id,
            workspace_id,
            key_type,
            mode,
            scopes,
            origins,
            rpm,
            burst,
            created_by,
            expires_at,
            revoked_at,
            overlap_ends_at,
        ) = row
        if revoked_at is not None:
            raise InvalidApiKey()
        until = valid_until(expires_at, overlap_ends_at)
        # On a tie the expiry counts (the key would have ended then anyway).
        is_expiry = until is not None and until == expires_at
        if until is not None and until <= self._clock.now():
            raise KeyExpired() if is_expiry else InvalidApiKey()
        return Verified(
            key_id=key_id,
            workspace_id=workspace_id,
            type=key_type,
            mode=mode,
            scopes=tuple(json.loads(scopes)),
            allowed_origins=tuple(json.loads(origins)),
            rate_limit=rate_limit_of(rpm, burst) or self._default_rate_limit,
            created_by=created_by,
            valid_until=until,
            valid_until_is_expiry=is_expiry,
        )

    async def record_usage(self, usages: Sequence[Usage]) -> int:
        """Stores the newest use per key (older than what is stored: ignored); returns how
        many keys the batch named."""
        if len(usages) > self._max_usages:
            raise InvalidUsage()
        horizon = self._clock.timestamp() + _MAX_USAGE_SKEW_SECONDS
        latest: dict[str, Usage] = {}
        for usage in usages:
            if not usage.key_id or len(usage.key_id) > ID_CHARS:
                continue
            if usage.used_at.timestamp() > horizon:
                continue
            seen = latest.get(usage.key_id)
            if seen is None or usage.used_at > seen.used_at:
                latest[usage.key_id] = usage
        if latest:
            ordered = [latest[k] for k in sorted(latest)]  # one lock order for every batch
            async with self._store.transaction() as tx:
                await tx.record_usage(ordered)
        return len(latest)
