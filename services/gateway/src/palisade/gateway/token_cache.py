"""Validated access tokens in memory: sub-millisecond answers, bounded in size and age.

Keys are SHA-256 of the token (never the token itself), the same hashes the revocation feed
announces, so an eviction is one dict lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from palisade.common.clock import Clock


@dataclass(frozen=True)
class Grant:
    user_id: str
    workspace_id: str
    role: str
    session_id: str
    expires_at: float  # Unix seconds


class TokenCache:
    def __init__(self, *, max_entries: int, max_age_seconds: float, clock: Clock) -> None:
        self._entries: OrderedDict[bytes, tuple[Grant, float]] = OrderedDict()
        self._by_session: dict[str, set[bytes]] = {}
        self._by_user: dict[str, set[bytes]] = {}
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

    def get(self, token_hash: bytes) -> Grant | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        grant, stale_at = entry
        if self._clock.timestamp() >= min(stale_at, grant.expires_at):
            self._drop(token_hash)
            return None
        self._entries.move_to_end(token_hash)
        return grant

    def put(self, token_hash: bytes, grant: Grant) -> None:
        self._drop(token_hash)
        self._entries[token_hash] = (grant, self._clock.timestamp() + self._max_age)
        self._by_session.setdefault(grant.session_id, set()).add(token_hash)
        self._by_user.setdefault(grant.user_id, set()).add(token_hash)
        while len(self._entries) > self._max_entries:
            self._drop(next(iter(self._entries)))

    def evict(self, token_hashes: Iterable[bytes], session_ids: Iterable[str]) -> None:
        self.generation += 1
        for token_hash in token_hashes:
            self._drop(token_hash)
        for session_id in session_ids:
            for token_hash in list(self._by_session.get(session_id, ())):
                self._drop(token_hash)

    def evict_user(self, user_id: str) -> None:
        self.generation += 1
        for token_hash in list(self._by_user.get(user_id, ())):
            self._drop(token_hash)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_session.clear()
        self._by_user.clear()

    def _drop(self, token_hash: bytes) -> None:
        entry = self._entries.pop(token_hash, None)
        if entry is None:
            return
        grant = entry[0]
        for index, key in ((self._by_session, grant.session_id), (self._by_user, grant.user_id)):
            hashes = index.get(key)
            if hashes is not None:
                hashes.discard(token_hash)
                if not hashes:
                    del index[key]
