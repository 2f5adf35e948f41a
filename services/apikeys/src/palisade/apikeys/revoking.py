"""Revoking a key: the conditional UPDATE, its history, security event, the revocation notice
for the gateways and the email notice for the key's creator, in one transaction.

Idempotent: revoking a revoked key changes nothing and records nothing, so 20 parallel
revocations leave one history entry and one notice. Used by people (RevokeApiKey), by
rotations with no overlap, and by operators (`palisade-apikeys keys revoke`), whose rows the
running service's relays publish and send.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime

from palisade.apikeys.access import Person
from palisade.apikeys.erasure import (
    ACCOUNT_DELETED,
    erase_person,
    lock_keys_of_creator,
    truncate_wal,
)
from palisade.apikeys.errors import KeyNotFound
from palisade.apikeys.history_seal import HistorySeal
from palisade.apikeys.model import SYSTEM, Actor, KeyEvent, KeyRecord
from palisade.apikeys.notices import KEY_REVOKED, Notice, NoticeOutbox
from palisade.apikeys.revocations import notice as revocation_notice
from palisade.apikeys.store import ApiKeyStore, KeysTransaction
from palisade.common.clock import Clock
from palisade.common.outbox import SecurityEvent
from palisade.common.revocation_outbox import RevocationOutbox

log = logging.getLogger("palisade.apikeys.revoking")

# Keys revoked per transaction by revoke_keys_of_user.
_USER_BATCH = 200


class KeyRevoker:
    def __init__(
        self,
        *,
        store: ApiKeyStore,
        revocations: RevocationOutbox,
        notices: NoticeOutbox,
        seal: HistorySeal,
        clock: Clock,
    ) -> None:
        self._store = store
        self._revocations = revocations
        self._notices = notices
        self._seal = seal
        self._clock = clock

    async def revoke(self, person: Person, key_id: str) -> bool:
        """Revokes a key of the person's workspace; returns whether this call revoked it.
        The history entry's client is sealed first (never inside the transaction); if crypto
        cannot, the key is revoked all the same and the entry keeps no client."""
        now = self._clock.now()
        [entry] = await self._seal.seal(
            [(person.workspace_id, key_id, history("revoked", now, person.actor))]
        )
        async with self._store.transaction() as tx:
            record = await tx.key(key_id, person.workspace_id)
            if record is None:
                raise KeyNotFound()
            revoked = await self.revoke_in(
                tx, record, person.actor, reason="revoked", now=now, entry=entry
            )
        self._wake(revoked)
        return revoked

    async def revoke_as_operator(self, key_id: str) -> bool:
        """Any workspace's key (the CLI); KeyNotFound for an unknown id."""
        async with self._store.transaction() as tx:
            record = await tx.key_by_id(key_id)
            if record is None:
                raise KeyNotFound()
            revoked = await self.revoke_in(tx, record, SYSTEM, reason="operator")
        self._wake(revoked)
        return revoked

    async def revoke_keys_of_user(
        self, user_id: str, workspace_id: str | None, *, actor: Actor, reason: str
    ) -> int:
        """Revokes every live key the person created (in one workspace, or all): a member
        removed, an account disabled or deleted. Returns how many this call revoked.

        Batches of _USER_BATCH keys per transaction, so a person with thousands of keys never
        holds one long lock; a retried call revokes what is left and counts only that. The
        creator gets no per-key email: auth tells them (and the workspace) what happened.
        """
        revoked = 0
        while True:
            async with self._store.transaction() as tx:
                records = await tx.live_keys_of_creator(
                    user_id, workspace_id, now=self._clock.now(), limit=_USER_BATCH
                )
                for record in records:
                    if await self.revoke_in(tx, record, actor, reason=reason, notify=False):
                        revoked += 1
            self._wake(bool(records))
            if len(records) < _USER_BATCH:
                break
        if reason == ACCOUNT_DELETED:
            revoked += await self._erase(user_id, actor)
        return revoked

    async def _erase(self, user_id: str, actor: Actor) -> int:
        """The deleted person's client out of every table (erasure.py), in one transaction
        with the revocation of any key they made since the batches above looked (through a
        gateway that still had their session cached): after its commit, none of their keys
        works and nothing of their client is left. Returns how many keys it revoked."""
        async with self._store.transaction() as tx:
            await lock_keys_of_creator(tx, user_id)  # before any row lock, in id order
            now = self._clock.now()
            late = await tx.live_keys_of_creator(user_id, None, now=now, limit=_USER_BATCH)
            revoked = 0
            for record in late:
                if await self.revoke_in(tx, record, actor, reason=ACCOUNT_DELETED, notify=False):
                    revoked += 1
            erased = await erase_person(tx, user_id, now)
        self._wake(bool(revoked))
        await truncate_wal(self._store.engine)
        log.info(
            "deleted account's client erased",
            extra={"user_id": user_id, "late_keys_revoked": revoked, **asdict(erased)},
        )
        return revoked

    def _wake(self, revoked: bool) -> None:
        if revoked:
            self._revocations.notify()
            self._notices.notify()

    async def revoke_in(
        self,
        tx: KeysTransaction,
        record: KeyRecord,
        actor: Actor,
        *,
        reason: str,
        notify: bool = True,
        now: datetime | None = None,
        entry: KeyEvent | None = None,
    ) -> bool:
        """entry: the history entry, sealed, where the actor is a person (see announce)."""
        now = now or self._clock.now()
        if not await tx.revoke(record.id, now=now, reason=reason):
            return False
        await self.announce(tx, record, now, actor, reason=reason, entry=entry)
        # The creator hears of it when someone else (or an operator) ended their key.
        if notify and record.created_by != actor.user_id:
            await self._notices.enqueue(
                tx.conn,
                Notice(
                    KEY_REVOKED,
                    now,
                    user_id=record.created_by,
                    workspace_id=record.workspace_id,
                    details={**key_details(record), "reason": reason},
                    ip=actor.ip or "",
                    user_agent=actor.user_agent or "",
                    actor=actor.principal,
                ),
            )
        return True

    async def announce(
        self,
        tx: KeysTransaction,
        record: KeyRecord,
        now: datetime,
        actor: Actor,
        *,
        reason: str,
        entry: KeyEvent | None = None,
    ) -> None:
        """History, security event and the gateways' notice of a revocation just written.
        entry: the sealed history entry of a person's revocation (the store refuses a
        person's client in plaintext); None: made here, for actors that are not people."""
        event = entry if entry is not None else history("revoked", now, actor)
        await tx.add_event(record.id, record.workspace_id, event)
        await tx.emit(security_event("apikey.revoked", now, actor, record, reason=reason))
        hashes = await tx.lookup_hashes([record.id])
        await self._revocations.enqueue(
            tx.conn, revocation_notice(hashes, [record.id], reason, now)
        )


def history(kind: str, now: datetime, actor: Actor) -> KeyEvent:
    return KeyEvent(kind, now, actor.principal, actor.ip, actor.device)


def key_details(record: KeyRecord) -> dict[str, str]:
    """What a notice email may show of a key (auth's catalogue): never the key itself."""
    return {
        "key_name": record.name,
        "key_type": record.type,
        "key_mode": record.mode,
        "key_id": record.id,
        "key_prefix": record.prefix,
        "key_last4": record.last4,
    }


def security_event(
    kind: str,
    now: datetime,
    actor: Actor,
    record: KeyRecord,
    *,
    reason: str | None = None,
    details: dict[str, str | int | bool | None] | None = None,
) -> SecurityEvent:
    return SecurityEvent(
        type=kind,
        occurred_at=now,
        actor=actor.principal,
        subject=f"apikey:{record.id}",
        workspace_id=record.workspace_id,
        ip=actor.ip,
        device=actor.device,
        reason=reason,
        details={"key_id": record.id, **(details or {})},
    )
