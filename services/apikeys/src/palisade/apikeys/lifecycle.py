"""A key's lifecycle: create, rotate, revoke, reveal, and revocation by a leak report.

Each step commits its history entry, its security event (the outbox), its revocation notice
(the revocation outbox, for the gateways) and its email notice (the notice outbox, for auth)
in one transaction with the change itself: an outage of audit, Redis or auth delays those,
never drops them, and never fails the step. One crypto call per create and rotate (the key's
secret and the person's client in its history entries, history_seal.py), two per reveal (the
secret opened, the entry's client sealed); a request that breaks a rule is refused before
anything is encrypted or written.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import timedelta

from palisade.apikeys.access import Person, RecentAuth
from palisade.apikeys.client_text import leak_source
from palisade.apikeys.errors import KeyNotActive, KeyNotFound, NotRevealable
from palisade.apikeys.history_seal import (
    HistorySeal,
    is_persons,
    seal_inputs,
    with_sealed,
    without_client,
)
from palisade.apikeys.model import ACTIVE, EXPIRING, Actor, KeyEvent, KeyRecord, KeySettings
from palisade.apikeys.notices import KEY_CREATED, KEY_LEAK_REPORTED, Notice, NoticeOutbox
from palisade.apikeys.revocations import notice as revocation_notice
from palisade.apikeys.revoking import KeyRevoker, history, key_details, security_event
from palisade.apikeys.store import ApiKeyStore, KeysTransaction
from palisade.apikeys.validation import check_overlap
from palisade.common import api_key_format
from palisade.common.aad import associated_data
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient
from palisade.common.revocation_outbox import RevocationOutbox

MAX_REPORTED_KEY_CHARS = 100
MAX_REPORTED_SOURCE_CHARS = 200


def secret_aad(workspace_id: str, key_id: str) -> bytes:
    """Associated data binding a key's ciphertext to its own row and workspace."""
    return associated_data("apikeys", "api_key", workspace_id, key_id, "secret")


def new_key_id() -> str:
    return f"key_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class CreatedKey:
    record: KeyRecord
    key: str  # shown this once


class KeyLifecycle:
    def __init__(
        self,
        *,
        store: ApiKeyStore,
        crypto: CryptoClient,
        revocations: RevocationOutbox,
        revoker: KeyRevoker,
        notices: NoticeOutbox,
        seal: HistorySeal,
        recent_auth: RecentAuth,
        clock: Clock,
        default_overlap_seconds: int = 3600,
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._seal = seal
        self._revocations = revocations
        self._revoker = revoker
        self._notices = notices
        self._recent_auth = recent_auth
        self._clock = clock
        self._default_overlap = default_overlap_seconds

    async def create(self, person: Person, settings: KeySettings) -> CreatedKey:
        """settings: already validated (palisade.apikeys.validation.key_settings)."""
        await self._recent_auth.require(person, action="create_api_key")
        minted = await self._mint(person, settings)
        async with self._store.transaction() as tx:
            await self._insert(tx, person, minted)
        self._notices.notify()
        return minted.created

    async def rotate(self, person: Person, key_id: str, overlap_seconds: int | None) -> CreatedKey:
        await self._recent_auth.require(person, action="rotate_api_key")
        overlap = check_overlap(overlap_seconds, self._default_overlap)
        async with self._store.transaction() as tx:
            old = await tx.key(key_id, person.workspace_id)
        if old is None:
            raise KeyNotFound()
        if old.state(self._clock.now()) != ACTIVE:
            raise KeyNotActive()
        minted = await self._mint(person, old.settings, rotating=old, revoking=overlap == 0)
        now = minted.created.record.created_at
        ends = now + timedelta(seconds=overlap)
        actor = person.actor
        _, rotated_entry, *revoked_entry = minted.entries
        async with self._store.transaction() as tx:
            await self._insert(tx, person, minted)
            # The conditional UPDATE decides between concurrent rotations (and a revocation).
            if not await tx.rotate_out(
                old.id,
                now=now,
                replaced_by=minted.created.record.id,
                overlap_ends_at=ends,
                revoke=overlap == 0,
            ):
                raise KeyNotActive()  # rolls back the new key too
            await tx.add_event(old.id, old.workspace_id, rotated_entry)
            await tx.emit(
                security_event(
                    "apikey.rotated",
                    now,
                    actor,
                    old,
                    details={"replaced_by": minted.created.record.id, "overlap_seconds": overlap},
                )
            )
            if overlap == 0:
                await self._revoker.announce(
                    tx, old, now, actor, reason="rotated", entry=revoked_entry[0]
                )
            else:
                # Not a revocation yet, but every gateway caches the old key as valid without
                # end: the notice makes them forget it, and their next lookup learns when the
                # overlap ends (otherwise a gateway could serve it until its cache entry aged
                # out, past a short overlap; a review finding).
                hashes = await tx.lookup_hashes([old.id])
                await self._revocations.enqueue(
                    tx.conn, revocation_notice(hashes, [old.id], "rotated", now)
                )
        self._revocations.notify()
        self._notices.notify()
        return minted.created

    async def revoke(self, person: Person, key_id: str) -> None:
        await self._revoker.revoke(person, key_id)

    async def revoke_keys_of_user(
        self, user_id: str, workspace_id: str | None, *, actor: Actor, reason: str
    ) -> int:
        return await self._revoker.revoke_keys_of_user(
            user_id, workspace_id, actor=actor, reason=reason
        )

    async def reveal(self, person: Person, key_id: str) -> str:
        await self._recent_auth.require(person, action="reveal_api_key")
        async with self._store.transaction() as tx:
            record = await tx.key(key_id, person.workspace_id)
            secret_ct = await tx.secret(key_id, person.workspace_id) if record else None
        if record is None or secret_ct is None:
            raise KeyNotFound()
        if record.type != "secret" or record.mode != "test":
            raise NotRevealable()
        if record.state(self._clock.now()) not in (ACTIVE, EXPIRING):
            raise KeyNotActive()  # a revoked or expired key is never shown again
        [plain] = await self._crypto.decrypt([(secret_ct, secret_aad(record.workspace_id, key_id))])
        now = self._clock.now()
        [entry] = await self._seal.seal(
            [(record.workspace_id, key_id, history("revealed", now, person.actor))]
        )
        async with self._store.transaction() as tx:
            await tx.add_event(key_id, record.workspace_id, entry)
            await tx.emit(security_event("apikey.revealed", now, person.actor, record))
        return plain.decode("ascii")

    async def report_leak(self, key: str, source: str, actor: Actor) -> None:
        """Revokes a well-formed, working key at once; says nothing either way.

        Malformed keys (the checksum is public) end before any lookup; every well-formed key
        costs one lookup in a transaction whether it exists or not. Only a key that really
        worked until now is revoked, which its reporter could have learnt by using it."""
        if len(key) > MAX_REPORTED_KEY_CHARS or len(source) > MAX_REPORTED_SOURCE_CHARS:
            return
        try:
            api_key_format.shape_of(key)
        except api_key_format.MalformedKey:
            return
        now = self._clock.now()
        where = leak_source(source)
        async with self._store.transaction() as tx:
            found = await tx.key_by_hash(api_key_format.lookup_hash(key))
            if found is None:
                return
            record, key_hash = found
            if record.state(now) not in (ACTIVE, EXPIRING):
                return
            if not await tx.revoke(record.id, now=now, reason="leak_reported"):
                return
            event = replace(history("leak_reported", now, actor), source=where)
            if is_persons(event):
                # A signed-in reporter's client is not shown to the key's workspace (usually
                # another one); the security event keeps it for audit (history_seal.py).
                event = without_client(event)
            await tx.add_event(record.id, record.workspace_id, event)
            await tx.emit(
                security_event(
                    "apikey.revoked",
                    now,
                    actor,
                    record,
                    reason="leak_reported",
                    details={"source": where},
                )
            )
            await self._revocations.enqueue(
                tx.conn, revocation_notice([key_hash], [record.id], "leak_reported", now)
            )
            await self._notices.enqueue(
                tx.conn,
                Notice(
                    KEY_LEAK_REPORTED,
                    now,
                    workspace_id=record.workspace_id,
                    roles=("owner",),
                    details={**key_details(record), "source": where or "unknown"},
                    ip=actor.ip or "",
                    user_agent=actor.user_agent or "",
                    actor=actor.principal,
                ),
            )
        self._revocations.notify()
        self._notices.notify()

    # -- shared steps --------------------------------------------------------------------

    async def _mint(
        self,
        person: Person,
        settings: KeySettings,
        *,
        rotating: KeyRecord | None = None,
        revoking: bool = False,
    ) -> _Minted:
        """A new key, its secret sealed, and its history entries with the person's client
        sealed in the same Encrypt call: `created`, and for a rotation the old key's `rotated`
        (and `revoked` when it ends at once), in that order."""
        key = api_key_format.generate(settings.type, settings.mode)
        key_id = new_key_id()
        now = self._clock.now()
        actor = person.actor
        entries = [(person.workspace_id, key_id, history("created", now, actor))]
        if rotating is not None:
            old = (rotating.workspace_id, rotating.id)
            entries.append((*old, history("rotated", now, actor)))
            if revoking:
                entries.append((*old, history("revoked", now, actor)))
        [secret_ct, *clients] = await self._crypto.encrypt(
            [(key.encode("ascii"), secret_aad(person.workspace_id, key_id)), *seal_inputs(entries)]
        )
        record = KeyRecord(
            id=key_id,
            workspace_id=person.workspace_id,
            name=settings.name,
            type=settings.type,
            mode=settings.mode,
            prefix=api_key_format.display_prefix(key),
            last4=api_key_format.last4(key),
            scopes=settings.scopes,
            allowed_origins=settings.allowed_origins,
            rate_limit=settings.rate_limit,
            created_by=person.user_id,
            created_at=now,
            expires_at=settings.expires_at,
            revoked_at=None,
            revoke_reason=None,
            replaced_by=None,
            overlap_ends_at=None,
            last_used_at=None,
            last_used_ip=None,
        )
        return _Minted(
            CreatedKey(record, key),
            api_key_format.lookup_hash(key),
            secret_ct,
            with_sealed(entries, clients),
        )

    async def _insert(self, tx: KeysTransaction, person: Person, minted: _Minted) -> None:
        record, actor = minted.created.record, person.actor
        now = record.created_at
        await tx.insert_key(record, lookup_hash=minted.lookup_hash, secret_ct=minted.secret_ct)
        await tx.add_event(record.id, record.workspace_id, minted.entries[0])
        await tx.emit(
            security_event(
                "apikey.created",
                now,
                actor,
                record,
                details={
                    "type": record.type,
                    "mode": record.mode,
                    "scopes": " ".join(record.scopes),
                    "prefix": record.prefix,
                },
            )
        )
        await self._notices.enqueue(
            tx.conn,
            Notice(
                KEY_CREATED,
                now,
                user_id=person.user_id,
                workspace_id=record.workspace_id,
                details={**key_details(record), "scopes": " ".join(record.scopes)},
                ip=actor.ip or "",
                user_agent=actor.user_agent or "",
                actor=actor.principal,
            ),
        )


@dataclass(frozen=True)
class _Minted:
    created: CreatedKey
    lookup_hash: bytes
    secret_ct: bytes
    entries: list[KeyEvent]  # history, sealed: created (then a rotation's rotated, revoked)
