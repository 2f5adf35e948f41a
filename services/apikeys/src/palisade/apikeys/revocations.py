"""Key revocation notices: what the feed carries to every gateway (their cache key, the hash).

The payload is a row of the revocation outbox (palisade.common.revocation_outbox), committed
with the revocation; the relay publishes it on the feed that WatchRevocations serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# pg_try_advisory_xact_lock key of this service's relay ("palisade apikeys relay"); auth's
# outbox has its own key, as each service has its own outbox.
RELAY_LOCK_KEY = 0x7061_6C61_706B_7631
CHANNEL = "palisade:apikeys:revocations"
SEQUENCE_KEY = "palisade:apikeys:revocations:sequence"


@dataclass(frozen=True)
class KeyRevocationNotice:
    key_hashes: tuple[bytes, ...]
    key_ids: tuple[str, ...]
    reason: str
    revoked_at: datetime

    def to_payload(self) -> dict[str, Any]:
        return {
            "key_hashes": [h.hex() for h in self.key_hashes],
            "key_ids": list(self.key_ids),
            "reason": self.reason,
            "revoked_at": self.revoked_at.isoformat(),
        }

    @classmethod
    def from_payload(cls, doc: dict[str, Any]) -> KeyRevocationNotice:
        """Raises ValueError, KeyError or TypeError for a payload that is not one."""
        hashes = tuple(bytes.fromhex(h) for h in doc["key_hashes"])
        if any(len(h) != 32 for h in hashes):
            raise ValueError("a key hash is 32 bytes")
        revoked_at = datetime.fromisoformat(doc["revoked_at"])
        return cls(hashes, tuple(str(i) for i in doc["key_ids"]), str(doc["reason"]), revoked_at)


def notice(
    key_hashes: Sequence[bytes], key_ids: Sequence[str], reason: str, revoked_at: datetime
) -> dict[str, Any]:
    return KeyRevocationNotice(tuple(key_hashes), tuple(key_ids), reason, revoked_at).to_payload()
