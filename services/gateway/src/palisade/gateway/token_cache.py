"""Validated credentials in memory: sub-millisecond answers, bounded in size and age.

Keys are SHA-256 of the credential (never the credential itself), the same hashes the
revocation feeds announce, so an eviction is one dict lookup. One IndexedCache holds the
mechanics (LRU bound, maximum age, the credential's own expiry, secondary indexes for
evicting by session, user, key id or workspace); TokenCache (access tokens) and KeyCache
(API keys) name its indexes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from palisade.common.clock import Clock

G = TypeVar("G")


@dataclass(frozen=True)
class Grant:
    user_id: str
    workspace_id: str
    role: str
    session_id: str
    expires_at: float  # Unix seconds
    authenticated_at: float = 0.0  # the session's login (Unix seconds): for "recent auth"
    # Actions the person may not perform until their address is verified (AccessRule
    # restricted_action values; empty once verified). Cached with the token: auth ends every
    # older session when an address is proven first, so a session's list never changes.
    restrictions: frozenset[str] = frozenset()


class IndexedCache(Generic[G]):
    def __init__(
        self,
        *,
        max_entries: int,
        max_age_seconds: float,
        clock: Clock,
        expires_at: Callable[[G], float],
        indexes: tuple[Callable[[G], str], ...],
    ) -> None:
        self._entries: OrderedDict[bytes, tuple[G, float]] = OrderedDict()
        self._expires_at = expires_at
        self._index_of = indexes
        self._indexes: tuple[dict[str, set[bytes]], ...] = tuple({} for _ in indexes)
        # Bumped by every eviction: a validation that started before an eviction must not
        # cache its (possibly revoked) answer afterwards.
        self.generation = 0
        self._max_entries = max_entries
        self._max_age = max_age_seconds
        self._clock = clock

    @property
    def clock(self) -> Clock:
        return self._clock

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, credential_hash: bytes) -> G | None:
        entry = self._entries.get(credential_hash)
        if entry is None:
            return None
        grant, stale_at = entry
        if self._clock.timestamp() >= min(stale_at, self._expires_at(grant)):
            self._drop(credential_hash)
            return None
        self._entries.move_to_end(credential_hash)
        return grant

    def put(self, credential_hash: bytes, grant: G) -> None:
        self._drop(credential_hash)
        self._entries[credential_hash] = (grant, self._clock.timestamp() + self._max_age)
        for index, key_of in zip(self._indexes, self._index_of, strict=True):
            index.setdefault(key_of(grant), set()).add(credential_hash)
        while len(self._entries) > self._max_entries:
            self._drop(next(iter(self._entries)))

    def evict_hashes(self, credential_hashes: Iterable[bytes]) -> None:
        self.generation += 1
        for credential_hash in credential_hashes:
            self._drop(credential_hash)

    def evict_indexed(self, index_number: int, keys: Iterable[str]) -> None:
        self.generation += 1
        index = self._indexes[index_number]
        for key in keys:
            for credential_hash in list(index.get(key, ())):
                self._drop(credential_hash)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        for index in self._indexes:
            index.clear()

    def _drop(self, credential_hash: bytes) -> None:
        entry = self._entries.pop(credential_hash, None)
        if entry is None:
            return
        grant = entry[0]
        for index, key_of in zip(self._indexes, self._index_of, strict=True):
            key = key_of(grant)
            hashes = index.get(key)
            if hashes is not None:
                hashes.discard(credential_hash)
                if not hashes:
                    del index[key]


_SESSION, _USER = 0, 1


class TokenCache(IndexedCache[Grant]):
    """Access tokens, evicted by token hash, session or user."""

    def __init__(self, *, max_entries: int, max_age_seconds: float, clock: Clock) -> None:
        super().__init__(
            max_entries=max_entries,
            max_age_seconds=max_age_seconds,
            clock=clock,
            expires_at=lambda grant: grant.expires_at,
            indexes=(lambda grant: grant.session_id, lambda grant: grant.user_id),
        )

    def evict(self, token_hashes: Iterable[bytes], session_ids: Iterable[str]) -> None:
        self.evict_hashes(token_hashes)
        self.evict_indexed(_SESSION, session_ids)

    def evict_user(self, user_id: str) -> None:
        self.evict_indexed(_USER, (user_id,))
