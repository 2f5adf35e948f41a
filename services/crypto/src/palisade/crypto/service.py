"""The crypto domain: batched encrypt/decrypt/rewrap/blind-index over the current keyring.

No gRPC or SQL types here. Batches are all-or-nothing: the first failing item fails the call,
named by its index (never its content), and nothing is returned for the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from palisade.common.aad import owned_by
from palisade.common.clock import Clock
from palisade.common.errors import PalisadeError
from palisade.crypto.blind_index import index_token
from palisade.crypto.envelope import (
    MIN_ENVELOPE_BYTES,
    key_version_of,
    open_envelope,
    seal_many,
)
from palisade.crypto.errors import (
    BatchTooLarge,
    ForeignAssociatedData,
    InvalidValue,
    MissingAssociatedData,
    at_item,
)
from palisade.crypto.keyring import Keyring, VersionedKeys
from palisade.crypto.keyring_file import KeyringHolder
from palisade.crypto.metrics import CryptoMetrics
from palisade.crypto.normalize import Normalization, normalize
from palisade.crypto.usage import UsageTracker

log = logging.getLogger("palisade.crypto")

MAX_CONTEXT_BYTES = 1024


# (plaintext or envelope, associated data). A plain tuple, not a class: a batch holds a
# thousand of them, and building tuples from protos costs a quarter of building objects.
Item = tuple[bytes, bytes]


@dataclass(frozen=True)
class IndexRequest:
    value: str
    normalization: Normalization
    context: bytes


@dataclass(frozen=True)
class IndexToken:
    key_version: int
    token: str


@dataclass(frozen=True)
class KeyVersionInfo:
    version: int
    primary: bool
    retired: bool
    encryptions: int
    created_at: datetime


@dataclass(frozen=True)
class KeyringStatus:
    data_keys: list[KeyVersionInfo]
    index_keys: list[KeyVersionInfo]
    min_data_version: int
    min_index_version: int
    warn_threshold: int
    rotate_threshold: int


@dataclass(frozen=True)
class Limits:
    max_items: int
    max_item_bytes: int


class CryptoService:
    def __init__(
        self,
        *,
        keyring: KeyringHolder,
        usage: UsageTracker,
        limits: Limits,
        metrics: CryptoMetrics,
        clock: Clock,
        auto_rotate: bool,
    ) -> None:
        self._keyring = keyring
        self._usage = usage
        self._limits = limits
        self._metrics = metrics
        self._clock = clock
        self._auto_rotate = auto_rotate

    # -- ownership ---------------------------------------------------------------------------

    def check_owner(self, operation: str, caller: str, associated: Sequence[bytes]) -> None:
        """Refuses associated data (or blind-index contexts) that are not the caller's.

        The first part must name the calling service (the verified assertion's issuer), so a
        service can open, rewrap or index only its own data: the gateway cannot decrypt
        auth's TOTP secrets, and no service can compute another's blind indexes. Checked before
        any key is touched; the failing item is named by its index.
        """
        for i, data in enumerate(associated):
            if data and not owned_by(data, caller):
                self._metrics.items.labels(operation, ForeignAssociatedData.code).inc()
                raise at_item(ForeignAssociatedData(), i)

    # -- operations --------------------------------------------------------------------------

    async def encrypt(self, items: Sequence[Item]) -> tuple[list[bytes], int]:
        self._check_batch("encrypt", items)
        key = self._keyring.current.data.primary_key
        await self._usage.reserve(key.version, len(items))
        ciphertexts = seal_many(key, items)
        self._metrics.items.labels("encrypt", "ok").inc(len(items))
        return ciphertexts, key.version

    def decrypt(self, items: Sequence[Item]) -> list[bytes]:
        self._check_batch("decrypt", items, overhead=MIN_ENVELOPE_BYTES)
        keyring = self._keyring.current
        plaintexts = [self._open("decrypt", keyring, i, item) for i, item in enumerate(items)]
        self._metrics.items.labels("decrypt", "ok").inc(len(items))
        return plaintexts

    async def rewrap(self, items: Sequence[Item]) -> tuple[list[bytes], list[bool], int]:
        """Moves envelopes under the primary key; the plaintext never leaves this method."""
        self._check_batch("rewrap", items, overhead=MIN_ENVELOPE_BYTES)
        keyring = self._keyring.current
        primary = keyring.data.primary_key
        # Every envelope is authenticated first, so a bad item fails the batch before any
        # encryption is counted, and an already-current envelope is not passed through blind.
        plaintexts = [self._open("rewrap", keyring, i, item) for i, item in enumerate(items)]
        # Only forward: after an operator rolled the primary back, newer data stays put.
        stale = [key_version_of(data) < primary.version for data, _ in items]
        await self._usage.reserve(primary.version, sum(stale))
        moving = [(p, aad) for p, (_, aad), m in zip(plaintexts, items, stale, strict=True) if m]
        resealed = iter(seal_many(primary, moving))
        out = [next(resealed) if m else data for (data, _), m in zip(items, stale, strict=True)]
        self._metrics.items.labels("rewrap", "ok").inc(len(items))
        return out, stale, primary.version

    def blind_index(
        self, requests: Sequence[IndexRequest], *, all_versions: bool
    ) -> list[list[IndexToken]]:
        self._check_count("blind_index", len(requests))
        index_keys = self._keyring.current.index
        versions = index_keys.usable_versions() if all_versions else [index_keys.primary]
        results: list[list[IndexToken]] = []
        for i, request in enumerate(requests):
            try:
                if not request.context:
                    raise MissingAssociatedData("a blind index needs a context")
                if len(request.context) > MAX_CONTEXT_BYTES:
                    raise InvalidValue(
                        f"a blind index context is limited to {MAX_CONTEXT_BYTES} bytes"
                    )
                value = normalize(request.value, request.normalization)
            except PalisadeError as exc:
                self._metrics.items.labels("blind_index", exc.code).inc()
                raise at_item(exc, i) from None
            results.append(
                [
                    IndexToken(v, index_token(index_keys.keys[v], value, request.context))
                    for v in versions
                ]
            )
        self._metrics.items.labels("blind_index", "ok").inc(len(requests))
        return results

    def status(self) -> KeyringStatus:
        keyring = self._keyring.current
        totals = self._usage.totals()
        return KeyringStatus(
            data_keys=_describe(keyring.data, totals),
            index_keys=_describe(keyring.index, {}),
            min_data_version=keyring.data.min_version,
            min_index_version=keyring.index.min_version,
            warn_threshold=self._usage.warn_threshold,
            rotate_threshold=self._usage.rotate_threshold,
        )

    # -- usage upkeep (called periodically by the server) -----------------------------------

    async def sync_usage(self) -> None:
        """Learns all replicas' counts, publishes them, and rotates a key at its threshold."""
        await self._usage.refresh()
        primary = self._keyring.current.data.primary
        for version, count in self._usage.totals().items():
            self._metrics.key_encryptions.labels(str(version)).set(count)
        self._metrics.primary_version.set(primary)
        warn = self._usage.needs_warning(primary)
        self._metrics.key_usage_warning.set(1 if warn else 0)
        if self._usage.needs_rotation(primary):
            await self._rotate_exhausted(primary)
        elif warn:
            log.warning(
                "primary data key is past its usage warning threshold",
                extra={"key_version": primary},
            )

    async def _rotate_exhausted(self, exhausted: int) -> None:
        if not self._auto_rotate:
            log.error(
                "primary data key needs rotation; auto-rotation is off",
                extra={"key_version": exhausted},
            )
            return

        rotated = False

        def rotate_if_still_primary(keyring: Keyring) -> Keyring:
            nonlocal rotated
            if keyring.data.primary != exhausted:  # another replica or the operator was first
                return keyring
            rotated = True
            return replace(keyring, data=keyring.data.rotated(self._clock.now()))

        try:
            # In a thread: the file lock may wait on the CLI or another replica.
            keyring = await asyncio.to_thread(self._keyring.update, rotate_if_still_primary)
        except OSError:
            log.error(
                "primary data key needs rotation but the keyring is read-only; "
                "rotate it with `palisade-crypto keys rotate`",
                extra={"key_version": exhausted},
            )
            return
        if not rotated:
            return
        self._metrics.auto_rotations.inc()
        log.warning(
            "rotated the primary data key on reaching its usage threshold",
            extra={"old_version": exhausted, "new_version": keyring.data.primary},
        )

    # -- helpers ------------------------------------------------------------------------------

    def _check_count(self, operation: str, count: int) -> None:
        if count > self._limits.max_items:
            self._metrics.items.labels(operation, BatchTooLarge.code).inc()
            raise BatchTooLarge(
                f"batch of {count} items exceeds the limit of {self._limits.max_items}"
            )

    def _check_batch(self, operation: str, items: Sequence[Item], *, overhead: int = 0) -> None:
        """Checks counts and sizes; envelopes (overhead > 0) may exceed plaintext by the header."""
        self._check_count(operation, len(items))
        limit = self._limits.max_item_bytes + overhead
        if all(aad and len(data) + len(aad) <= limit for data, aad in items):
            return  # the common case, checked in one cheap pass
        for i, (data, aad) in enumerate(items):
            error: PalisadeError | None = None
            if not aad:
                error = MissingAssociatedData()
            elif len(data) + len(aad) > limit:
                error = BatchTooLarge(f"item exceeds {limit} bytes")
            if error is not None:
                self._metrics.items.labels(operation, error.code).inc()
                raise at_item(error, i)

    def _open(self, operation: str, keyring: Keyring, index: int, item: Item) -> bytes:
        envelope, aad = item
        try:
            key = keyring.data.usable(key_version_of(envelope))
            return open_envelope(key, envelope, aad)
        except PalisadeError as exc:
            self._metrics.items.labels(operation, exc.code).inc()
            raise at_item(exc, index) from None


def _describe(keys: VersionedKeys, totals: dict[int, int]) -> list[KeyVersionInfo]:
    return [
        KeyVersionInfo(
            version=v,
            primary=v == keys.primary,
            retired=v < keys.min_version,
            encryptions=totals.get(v, 0),
            created_at=k.created_at,
        )
        for v, k in sorted(keys.keys.items())
    ]
