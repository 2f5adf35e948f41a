"""Passkey management: list, get, rename and remove the signed-in user's passkeys."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime

from palisade.auth.mail.account_notices import PASSKEY_REMOVED
from palisade.auth.passkeys.ceremony import PasskeyCeremonies
from palisade.auth.passkeys.errors import InvalidPasskeyName, PasskeyNotFound
from palisade.auth.passkeys.store import PasskeyRecords, PasskeyRow
from palisade.auth.sessions.manager import ClientInfo

DEFAULT_NAME = "Passkey"
MAX_NAME_LENGTH = 100


@dataclass(frozen=True)
class PasskeyInfo:
    id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    backed_up: bool


def clean_passkey_name(name: str, *, default: str | None = None) -> str:
    """NFC, trimmed, 1..100 printable characters; empty becomes `default` where one is given."""
    cleaned = unicodedata.normalize("NFC", name or "").strip()
    if not cleaned and default is not None:
        return default
    if not 1 <= len(cleaned) <= MAX_NAME_LENGTH or not cleaned.isprintable():
        raise InvalidPasskeyName()
    return cleaned


def _info(row: PasskeyRow) -> PasskeyInfo:
    return PasskeyInfo(row.id, row.name, row.created_at, row.last_used_at, row.backed_up)


class PasskeyManagement(PasskeyCeremonies):
    async def list(self, user_id: str) -> list[PasskeyInfo]:
        async with self._store.transaction() as tx:
            return [_info(row) for row in await PasskeyRecords(tx).of_user(user_id)]

    async def count(self, user_id: str) -> int:
        async with self._store.transaction() as tx:
            return await PasskeyRecords(tx).count(user_id)

    async def get(self, user_id: str, passkey_id: str) -> PasskeyInfo:
        """The user's passkey; another user's id is not found, like a missing one."""
        async with self._store.transaction() as tx:
            row = await PasskeyRecords(tx).get(user_id, passkey_id)
        if row is None:
            raise PasskeyNotFound()
        return _info(row)

    async def rename(
        self, *, user_id: str, passkey_id: str, name: str, client: ClientInfo
    ) -> PasskeyInfo:
        label = clean_passkey_name(name)
        async with self._store.transaction() as tx:
            records = PasskeyRecords(tx)
            if not await records.rename(user_id, passkey_id, label):
                raise PasskeyNotFound()
            row = await records.get(user_id, passkey_id)
            assert row is not None
            await tx.emit(
                self._event("passkey.renamed", user_id, client, details={"passkey_id": passkey_id})
            )
        return _info(row)

    async def delete(self, *, user_id: str, passkey_id: str, client: ClientInfo) -> None:
        async with self._store.transaction() as tx:
            row = await PasskeyRecords(tx).get(user_id, passkey_id)
        if row is None:
            raise PasskeyNotFound()
        told = await self._notices.prepare(
            PASSKEY_REMOVED, user_id=user_id, client=client, details={"passkey_name": row.name}
        )
        async with self._store.transaction() as tx:
            if not await PasskeyRecords(tx).delete(user_id, passkey_id):
                raise PasskeyNotFound()
            await self._notices.enqueue(tx, told)
            await tx.emit(
                self._event("passkey.removed", user_id, client, details={"passkey_id": passkey_id})
            )
        self._notices.notify()
