"""Encryption counting per key version, against the random-IV bound of AES-GCM.

With random IVs, the chance of an IV collision under one key must stay negligible, which NIST
SP 800-38D caps at 2^32 encryptions per key. We warn well before, rotate automatically well
before, and refuse to encrypt past a hard limit below 2^32.

Counts are leased, not reported: before encrypting, a replica atomically adds a block of
encryptions to the version's total in the database (UPDATE ... RETURNING) and then spends it
locally. The database total is therefore always an upper bound of the encryptions made by all
replicas together: a crash or restart only wastes the unspent part of a block (over-counting,
the safe direction), and with the database unreachable a replica can spend what it already
leased and then fails closed, instead of counting on without a ledger.
"""

from __future__ import annotations

import asyncio

from palisade.common.errors import Unavailable
from palisade.crypto.errors import KeyUsageExhausted
from palisade.crypto.store import UsageStore


class UsageTracker:
    def __init__(
        self,
        *,
        store: UsageStore,
        warn_threshold: int,
        rotate_threshold: int,
        hard_limit: int,
        lease_size: int,
    ) -> None:
        if not warn_threshold <= rotate_threshold < hard_limit:
            raise ValueError("need warn_threshold <= rotate_threshold < hard_limit")
        if lease_size < 1:
            raise ValueError("lease_size must be positive")
        self._store = store
        self.warn_threshold = warn_threshold
        self.rotate_threshold = rotate_threshold
        self.hard_limit = hard_limit
        self._lease_size = lease_size
        self._totals: dict[int, int] = {}  # leased by all replicas, as last seen
        self._available: dict[int, int] = {}  # leased by this replica, not yet spent
        self._lease_lock = asyncio.Lock()

    def total(self, version: int) -> int:
        """Encryptions under version across replicas: an upper bound (leases included)."""
        return self._totals.get(version, 0)

    def totals(self) -> dict[int, int]:
        return dict(self._totals)

    def available(self, version: int) -> int:
        return self._available.get(version, 0)

    async def reserve(self, version: int, count: int) -> None:
        """Spends count encryptions under version, leasing more first if needed.

        All or nothing: raises KeyUsageExhausted past the hard limit, Unavailable when more
        must be leased and the database cannot be reached.
        """
        if count <= 0 or self._spend(version, count):
            return
        async with self._lease_lock:
            if self._spend(version, count):  # another batch leased enough meanwhile
                return
            needed = count - self.available(version)
            if self.total(version) + needed > self.hard_limit:
                raise KeyUsageExhausted()
            block = max(needed, self._lease_size)
            try:
                new_total = await self._store.lease(version, block)
            except Exception:
                raise Unavailable("the encryption ledger is unavailable") from None
            self._totals[version] = max(new_total, self.total(version))
            # Only the part of the block below the hard limit may be spent (the rest stays
            # counted, which is safe).
            usable = max(0, min(block, self.hard_limit - (new_total - block)))
            self._available[version] = self.available(version) + usable
            if not self._spend(version, count):
                raise KeyUsageExhausted()

    def _spend(self, version: int, count: int) -> bool:
        if self.available(version) < count:
            return False
        self._available[version] -= count
        return True

    def needs_rotation(self, version: int) -> bool:
        return self.total(version) >= self.rotate_threshold

    def needs_warning(self, version: int) -> bool:
        return self.total(version) >= self.warn_threshold

    async def refresh(self) -> None:
        """Learns the other replicas' leases (totals never go down)."""
        for version, count in (await self._store.totals()).items():
            self._totals[version] = max(count, self.total(version))
