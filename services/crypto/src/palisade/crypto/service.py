"""The crypto domain: batched encrypt/decrypt/rewrap/blind-index over the current keyring, and
data subjects' keys (crypto-shredding, see subjects.py).

No gRPC or SQL types here. Batches are all-or-nothing: the first failing item fails the call,
named by its index (never its content), and nothing is returned for the others (the one
exception: a Decrypt that tolerates erased subjects answers their items empty and flagged).
A batch that names subjects reads their rows once, in one statement, whatever its size.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from palisade.common.aad import owned_by
from palisade.common.clock import Clock
from palisade.common.errors import InvalidArgument, PalisadeError
from palisade.crypto.blind_index import index_token
from palisade.crypto.envelope import (
    FORMAT_SUBJECT,
    HEADER_BYTES,
    MAX_ENVELOPE_OVERHEAD,
    SUBJECT_HEADER_BYTES,
    key_version_of,
    open_envelope,
    parse,
    seal_many,
    seal_with,
)
from palisade.crypto.errors import (
    BatchTooLarge,
    ForeignAssociatedData,
    InvalidValue,
    MissingAssociatedData,
    SubjectErased,
    UnknownSubjectKey,
    at_item,
)
from palisade.crypto.keyring import Keyring, KeyVersion, VersionedKeys
from palisade.crypto.keyring_file import KeyringHolder
from palisade.crypto.metrics import CryptoMetrics
from palisade.crypto.normalize import Normalization, normalize
from palisade.crypto.subjects import (
    SubjectDataKey,
    SubjectRecord,
    SubjectSecret,
    SubjectStore,
    check_shredder,
    check_subject,
    new_record,
    rewrapped,
    shred_subject,
    subject_data_key,
    unwrap_secret,
)
from palisade.crypto.usage import UsageTracker

log = logging.getLogger("palisade.crypto")

MAX_CONTEXT_BYTES = 1024


# (plaintext or envelope, associated data). A plain tuple, not a class: a batch holds a
# thousand of them, and building tuples from protos costs a quarter of building objects.
Item = tuple[bytes, bytes]

_SUBJECT_FORMAT = bytes([FORMAT_SUBJECT])


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
        subjects: SubjectStore | None = None,
    ) -> None:
        self._keyring = keyring
        self._subjects = subjects  # None: items naming a subject are refused
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

    async def encrypt(
        self, items: Sequence[Item], subjects: Sequence[str] | None = None
    ) -> tuple[list[bytes], int]:
        """Envelopes under the primary data key; an item with a subject (subjects parallel to
        items, "" for none) under that subject's key, its secret made on first use."""
        self._check_batch("encrypt", items)
        keyring = self._keyring.current
        key = keyring.data.primary_key
        if not subjects or not any(subjects):
            await self._usage.reserve(key.version, len(items))
            ciphertexts = seal_many(key, items)
            self._metrics.items.labels("encrypt", "ok").inc(len(items))
            return ciphertexts, key.version
        if len(subjects) != len(items):
            raise ValueError("subjects must be parallel to items")
        first = self._first_items("encrypt", subjects)
        live = await self._live_subjects(keyring, first)
        await self._move_wraps_forward(key, live.values())
        # Derived keys are AES keys of their own, so counting their encryptions against the
        # data-key version over-counts: the safe direction.
        await self._usage.reserve(key.version, len(items))
        ciphertexts = _seal(key, items, [live[s] if s else None for s in subjects])
        named = sum(1 for s in subjects if s)
        self._metrics.subject_encryptions.inc(named)
        self._metrics.items.labels("encrypt", "ok").inc(len(items))
        return ciphertexts, key.version

    async def decrypt(self, items: Sequence[Item]) -> list[bytes]:
        """Plaintexts, in order; an item of an erased subject fails the batch (subject_erased)."""
        plaintexts, _ = await self._decrypt(items, tolerate_erased=False)
        return plaintexts

    async def decrypt_tolerating_erased(
        self, items: Sequence[Item]
    ) -> tuple[list[bytes], list[bool]]:
        """Plaintexts and, in parallel, whether the item's subject was erased (its plaintext is
        then empty); every other failure still fails the batch."""
        plaintexts, erased = await self._decrypt(items, tolerate_erased=True)
        flags = [False] * len(items)
        for index in erased:
            flags[index] = True
        return plaintexts, flags

    async def _decrypt(
        self, items: Sequence[Item], *, tolerate_erased: bool
    ) -> tuple[list[bytes], list[int]]:
        self._check_batch("decrypt", items, overhead=MAX_ENVELOPE_OVERHEAD)
        keyring = self._keyring.current
        subjects = await self._subjects_of(items)
        plaintexts, erased = self._open_all(
            "decrypt", keyring, items, subjects, tolerate_erased=tolerate_erased
        )
        self._metrics.items.labels("decrypt", "ok").inc(len(items) - len(erased))
        if erased:
            self._metrics.items.labels("decrypt", "erased").inc(len(erased))
        return plaintexts, erased

    async def rewrap(self, items: Sequence[Item]) -> tuple[list[bytes], list[bool], int]:
        """Moves envelopes under the primary key, each keeping its subject; the plaintext never
        leaves this method. An item of an erased subject fails the batch (subject_erased)."""
        self._check_batch("rewrap", items, overhead=MAX_ENVELOPE_OVERHEAD)
        keyring = self._keyring.current
        primary = keyring.data.primary_key
        subjects = await self._subjects_of(items)
        # Every envelope is authenticated first, so a bad item fails the batch before any
        # encryption is counted, and an already-current envelope is not passed through blind.
        plaintexts, _ = self._open_all("rewrap", keyring, items, subjects, tolerate_erased=False)
        if subjects is not None:
            # The subjects' secrets move to the primary with their data, so retiring the old
            # version strands neither (`keys retire` moves every remaining one as well).
            await self._move_wraps_forward(primary, subjects.secrets())
        # Only forward: after an operator rolled the primary back, newer data stays put.
        stale = [key_version_of(data) < primary.version for data, _ in items]
        await self._usage.reserve(primary.version, sum(stale))
        moving = [(p, aad) for p, (_, aad), m in zip(plaintexts, items, stale, strict=True) if m]
        owners = [
            None if subjects is None else subjects.secret_of(data)
            for (data, _), m in zip(items, stale, strict=True)
            if m
        ]
        resealed = iter(_seal(primary, moving, owners))
        out = [next(resealed) if m else data for (data, _), m in zip(items, stale, strict=True)]
        self._metrics.items.labels("rewrap", "ok").inc(len(items))
        return out, stale, primary.version

    async def shred_subject(self, subject: str, *, actor: str) -> bool:
        """Destroys the subject's secret (see subjects.shred_subject); False if it already was.
        `actor` is the calling service: only the owner of the subject's kind may
        (PERMISSION_DENIED subject_not_owned, before anything is touched)."""
        check_shredder(subject, actor)
        store = self._require_subjects()
        shredded = await shred_subject(store, subject, now=self._clock.now(), actor=actor)
        self._metrics.subject_shreds.labels("shredded" if shredded else "already_shredded").inc()
        return shredded

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

    def _first_items(self, operation: str, subjects: Sequence[str]) -> dict[str, int]:
        """Each named subject and the first item naming it; refuses a malformed subject."""
        first: dict[str, int] = {}
        for index, subject in enumerate(subjects):
            if subject and subject not in first:
                try:
                    check_subject(subject)
                except PalisadeError as exc:
                    self._metrics.items.labels(operation, exc.code).inc()
                    raise at_item(exc, index) from None
                first[subject] = index
        return first

    def _require_subjects(self) -> SubjectStore:
        if self._subjects is None:
            raise InvalidArgument("this server keeps no subject keys")
        return self._subjects

    async def _live_subjects(
        self, keyring: Keyring, first: dict[str, int]
    ) -> dict[str, SubjectSecret]:
        """The secrets of these subjects, made for those that have none: one read for the
        batch, plus an insert and a read of the winners when some are new. A subject that was
        shredded is refused, never given a new secret."""
        store = self._require_subjects()
        names = list(first)
        records = await store.by_subjects(names)
        missing = [s for s in names if s not in records]
        if missing:
            now = self._clock.now()
            primary = keyring.data.primary_key
            await store.insert_new([new_record(primary, s, now) for s in missing])
            won = await store.by_subjects(missing)
            records.update(won)
        live: dict[str, SubjectSecret] = {}
        for subject, index in first.items():
            record = records[subject]
            try:
                if record.erased:
                    raise SubjectErased()
                live[subject] = _unwrap(keyring.data, record)
            except PalisadeError as exc:
                self._metrics.items.labels("encrypt", exc.code).inc()
                raise at_item(exc, index) from None
        return live

    async def _subjects_of(self, items: Sequence[Item]) -> _BatchSubjects | None:
        """The subject rows a batch of envelopes needs (one read), or None if it needs none."""
        # A slice per format 2 envelope, no call per item: batches without subjects pay
        # one cheap pass. parse() refuses malformed envelopes later, item by item.
        key_ids = {
            e[HEADER_BYTES:SUBJECT_HEADER_BYTES] for e, _ in items if e[:1] == _SUBJECT_FORMAT
        }
        if not key_ids:
            return None
        records = {} if self._subjects is None else await self._subjects.by_key_ids(list(key_ids))
        return _BatchSubjects(records)

    def _open_all(
        self,
        operation: str,
        keyring: Keyring,
        items: Sequence[Item],
        subjects: _BatchSubjects | None,
        *,
        tolerate_erased: bool,
    ) -> tuple[list[bytes], list[int]]:
        """Every plaintext (b"" for a tolerated erased item) and the erased items' indexes."""
        plaintexts: list[bytes] = []
        erased: list[int] = []
        data_keys = keyring.data
        for index, (envelope, aad) in enumerate(items):
            try:
                version, key_id = parse(envelope)
                if key_id is None:
                    plaintexts.append(open_envelope(data_keys.usable(version), envelope, aad))
                elif subjects is None:
                    raise UnknownSubjectKey()
                else:
                    key = subjects.data_key(data_keys, version, key_id)
                    plaintexts.append(open_envelope(key, envelope, aad))
            except SubjectErased as exc:
                if not tolerate_erased:
                    self._metrics.items.labels(operation, exc.code).inc()
                    raise at_item(exc, index) from None
                plaintexts.append(b"")
                erased.append(index)
            except PalisadeError as exc:
                self._metrics.items.labels(operation, exc.code).inc()
                raise at_item(exc, index) from None
        return plaintexts, erased

    async def _move_wraps_forward(
        self, primary: KeyVersion, secrets: Iterable[SubjectSecret]
    ) -> None:
        """Rewraps secrets still wrapped under an older version (once per subject per rotation;
        a shred that got there first wins, see the store)."""
        store = self._require_subjects()
        for secret in secrets:
            if secret.wrap_version < primary.version:
                await store.rewrap(secret.key_id, rewrapped(primary, secret), primary.version)


class _BatchSubjects:
    """The subject rows one batch names, each secret unwrapped and each key derived at most
    once for the batch, then dropped with it (see subjects.py on why nothing is cached)."""

    def __init__(self, records: dict[bytes, SubjectRecord]) -> None:
        self._records = records
        self._secrets: dict[bytes, SubjectSecret] = {}
        self._keys: dict[tuple[int, bytes], SubjectDataKey] = {}

    def data_key(self, data_keys: VersionedKeys, version: int, key_id: bytes) -> SubjectDataKey:
        """The subject's key under `version`; SubjectErased once its secret is gone (whatever
        the version: even one since retired), UnknownSubjectKey for a key id with no row."""
        key = self._keys.get((version, key_id))
        if key is None:
            secret = self._secret(data_keys, key_id)
            key = subject_data_key(data_keys.usable(version), secret)
            self._keys[version, key_id] = key
        return key

    def secret_of(self, envelope: bytes) -> SubjectSecret | None:
        """The secret of an envelope already opened by data_key() (None for format 1)."""
        _, key_id = parse(envelope)
        return None if key_id is None else self._secrets[key_id]

    def secrets(self) -> list[SubjectSecret]:
        return list(self._secrets.values())

    def _secret(self, data_keys: VersionedKeys, key_id: bytes) -> SubjectSecret:
        secret = self._secrets.get(key_id)
        if secret is None:
            record = self._records.get(key_id)
            if record is None:
                raise UnknownSubjectKey()
            if record.erased:
                # Answered whatever the item's associated data, and it cannot be otherwise: the
                # only thing that binds associated data to an envelope is its AES-GCM tag, under
                # the subject's key, and that key died with the secret (deriving it needs the
                # secret; nothing else about the data survives, by design). So a wrong-AD item
                # of an erased subject cannot be told from a right one and answers
                # subject_erased too: a service holding a copy of an envelope (even under its
                # own associated data) learns that its subject was erased, and nothing else.
                # Closing that would need a new envelope format carrying an AD commitment
                # under a keyring-derived key, which outlives the shred. A live subject's
                # wrong-AD item still fails as tampered. See test_encrypt_with_index.py.
                raise SubjectErased()
            secret = self._secrets[key_id] = _unwrap(data_keys, record)
        return secret


def _unwrap(data_keys: VersionedKeys, record: SubjectRecord) -> SubjectSecret:
    try:
        return unwrap_secret(data_keys, record)
    except PalisadeError as exc:
        # Its data cannot be opened until this is fixed: a version retired before `keys
        # retire` could move the secret, or the row was altered.
        log.error(
            "a subject's secret cannot be unwrapped",
            extra={"subject_key_id": record.key_id.hex(), "reason": exc.code},
        )
        raise


def _seal(
    key: KeyVersion, items: Sequence[Item], owners: Sequence[SubjectSecret | None]
) -> list[bytes]:
    """Envelopes under key, in order: format 1 where the owner is None, else under the owning
    subject's key derived from it (one derivation per subject)."""
    groups: dict[bytes, list[int]] = {}
    secrets: dict[bytes, SubjectSecret] = {}
    plain: list[int] = []
    for index, owner in enumerate(owners):
        if owner is None:
            plain.append(index)
        else:
            groups.setdefault(owner.key_id, []).append(index)
            secrets[owner.key_id] = owner
    out: list[bytes] = [b""] * len(items)
    if plain:
        for index, sealed in zip(plain, seal_many(key, [items[i] for i in plain]), strict=True):
            out[index] = sealed
    for key_id, indexes in groups.items():
        subject_key = subject_data_key(key, secrets[key_id])
        sealed_all = seal_with(subject_key, subject_key.head, [items[i] for i in indexes])
        for index, sealed in zip(indexes, sealed_all, strict=True):
            out[index] = sealed
    return out


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
