"""Encryption counting per key version, against the random-IV bound of AES-GCM.

With random IVs, the chance of an IV collision under one key must stay negligible, which NIST
SP 800-38D caps at 2^32 encryptions per key. We warn well before, rotate automatically well
before, and refuse to encrypt past a hard limit that stays below 2^32 even if every replica's
unflushed count lands at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from palisade.crypto.errors import KeyUsageExhausted
from palisade.crypto.store import UsageStore


class UsageTracker:
    """Local pending counts plus the last known totals from the store."""

    def __init__(
        self, *, store: UsageStore, warn_threshold: int, rotate_threshold: int, hard_limit: int
    ) -> None:
        if not warn_threshold <= rotate_threshold < hard_limit:
            raise ValueError("need warn_threshold <= rotate_threshold < hard_limit")
        self._store = store
        self.warn_threshold = warn_threshold
        self.rotate_threshold = rotate_threshold
        self.hard_limit = hard_limit
        # Every count is in exactly one of these at any await point, so total() never drops
        # counts that are on their way to the store (which would let the hard limit be passed).
        self._persisted: dict[int, int] = {}
        self._inflight: dict[int, int] = {}
        self._pending: dict[int, int] = {}
        self._flush_lock = asyncio.Lock()

    def total(self, version: int) -> int:
        return (
            self._persisted.get(version, 0)
            + self._inflight.get(version, 0)
            + self._pending.get(version, 0)
        )

    def totals(self) -> dict[int, int]:
        versions = self._persisted.keys() | self._inflight.keys() | self._pending.keys()
        return {v: self.total(v) for v in versions}

    def reserve(self, version: int, count: int) -> None:
        """Records count encryptions under version, or refuses them past the hard limit."""
        if self.total(version) + count > self.hard_limit:
            raise KeyUsageExhausted()
        self._pending[version] = self._pending.get(version, 0) + count

    def needs_rotation(self, version: int) -> bool:
        return self.total(version) >= self.rotate_threshold

    def needs_warning(self, version: int) -> bool:
        return self.total(version) >= self.warn_threshold

    async def flush(self) -> None:
        """Adds pending counts to the store and refreshes totals; keeps them if the store fails."""
        async with self._flush_lock:
            self._inflight, self._pending = self._pending, {}
            try:
                await self._store.add(self._inflight)
            except BaseException:
                _add_into(self._pending, self._inflight)
                self._inflight = {}
                raise
            _add_into(self._persisted, self._inflight)
            self._inflight = {}
            stored = await self._store.totals()
            # Other replicas' counts arrive through the store; never let a total go down.
            for version, count in stored.items():
                self._persisted[version] = max(count, self._persisted.get(version, 0))


def _add_into(target: dict[int, int], counts: Mapping[int, int]) -> None:
    for version, n in counts.items():
        target[version] = target.get(version, 0) + n
