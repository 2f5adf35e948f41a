"""Disabling and enabling an account (SECURITY.md 26, 45): `palisade-auth users disable EMAIL`.

Disable is one transaction: users.disabled_at is set (first, so the row lock orders it against
every login in flight, see account_state.py), every live session of the user ends (with its
revocation notice in the outbox, so each gateway evicts the tokens at once), the revocation of
the API keys the person created in every workspace is requested from apikeys (the durable
key_revocations outbox; a second sweep a minute later catches a key created meanwhile through
a gateway that still held a cached session), every outstanding emailed link (magic links,
verification, reset, email change, "not me") is used up, and `account.disabled` is recorded
with the operator as actor. Either all of it happens or none.

After that no way in works: each login path answers account_disabled once the credential is
proven, a refresh token answers the same, and ValidateAccessToken refuses the ended sessions.
Enable clears disabled_at and records `account.enabled`; what disabling ended stays ended
(sessions, links, and keys, which apikeys never revives): the person signs in again and
creates new keys.

Both are idempotent: disabling a disabled account ends whatever might still be live and asks
apikeys again (harmless: it revokes what is left), without a second event; enabling an
enabled account changes and records nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update

from palisade.auth.accounts.key_revocations import (
    ACCOUNT_DISABLED,
    request_key_revocation,
    schedule_key_revocation,
)
from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT, normalize_email
from palisade.auth.errors import AccountNotFound
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import MAGIC_LINK, MAGIC_LINK_TABLE, account_tokens
from palisade.auth.sessions.manager import ClientInfo, SessionManager
from palisade.auth.store import AuthStore, AuthTransaction, users
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, Normalization
from palisade.common.outbox import SecurityEvent

# The CLI's principal in the security log (who disabled or enabled the account).
OPERATOR_CLI = "operator:cli"
_NO_CLIENT = ClientInfo(ip=None, device=None)
# The second key revocation sweep: by then no gateway acts on a cached session of the person
# (the revocation feed evicts at once; a gateway that hears no heartbeat for 2 s stops
# trusting its cache), and a key creation in flight through one has long finished (10 s).
SWEEP_AFTER = timedelta(seconds=60)


@dataclass(frozen=True)
class DisableResult:
    user_id: str
    changed: bool  # False: it was disabled already
    sessions_ended: int


@dataclass(frozen=True)
class EnableResult:
    user_id: str
    changed: bool  # False: it was not disabled


class AccountDisabling:
    def __init__(
        self, *, store: AuthStore, crypto: CryptoClient, sessions: SessionManager, clock: Clock
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._sessions = sessions
        self._clock = clock
        self._magic_links = SingleUseTokens(table=MAGIC_LINK_TABLE, purpose=MAGIC_LINK, clock=clock)

    async def user_id_of(self, email: str) -> str:
        """The account's id; InvalidEmail for a malformed address, AccountNotFound if none."""
        tokens = await self._crypto.blind_index(
            normalize_email(email), Normalization.EMAIL, EMAIL_INDEX_CONTEXT, all_versions=True
        )
        async with self._store.transaction() as tx:
            user = await tx.user_by_email_index(tokens)
        if user is None:
            raise AccountNotFound()
        return user.id

    async def disable(self, email: str, *, actor: str = OPERATOR_CLI) -> DisableResult:
        return await self.disable_user(await self.user_id_of(email), actor=actor)

    async def enable(self, email: str, *, actor: str = OPERATOR_CLI) -> EnableResult:
        return await self.enable_user(await self.user_id_of(email), actor=actor)

    async def disable_user(self, user_id: str, *, actor: str = OPERATOR_CLI) -> DisableResult:
        async with self._store.transaction() as tx:
            now = self._clock.now()
            # First: the row lock makes a login in flight either finish before (and its
            # session is ended below) or see the account disabled (account_state.py).
            found, changed = await _set_disabled(tx, user_id, {"disabled_at": now})
            if not found:
                raise AccountNotFound()
            notice = await self._sessions.revoke_all_in(
                tx,
                user_id=user_id,
                keep=None,
                reason="account_disabled",
                actor=actor,
                client=_NO_CLIENT,
                event_type="session.revoked",
            )
            await self._magic_links.retire(tx, user_id)
            await _retire_account_tokens(tx, user_id, now)
            await request_key_revocation(
                tx, user_id=user_id, workspace_id=None, reason=ACCOUNT_DISABLED
            )
            await schedule_key_revocation(
                tx,
                user_id=user_id,
                workspace_id=None,
                reason=ACCOUNT_DISABLED,
                due=now + SWEEP_AFTER,
                wall_delay=SWEEP_AFTER,
            )
            if changed:
                await tx.emit(
                    SecurityEvent(
                        type="account.disabled",
                        occurred_at=now,
                        actor=actor,
                        subject=user_id,
                        details={"sessions_ended": len(notice.session_ids)},
                    )
                )
        await self._sessions.announce(notice)  # after commit: this process's relay, now
        return DisableResult(user_id, changed, len(notice.session_ids))

    async def enable_user(self, user_id: str, *, actor: str = OPERATOR_CLI) -> EnableResult:
        async with self._store.transaction() as tx:
            now = self._clock.now()
            user = await tx.user(user_id)
            if user is not None and user.deleted:
                raise AccountNotFound()  # a deleted account stays out for good
            found, changed = await _set_disabled(tx, user_id, {"disabled_at": None})
            if not found:
                raise AccountNotFound()
            if changed:
                await tx.emit(
                    SecurityEvent(
                        type="account.enabled", occurred_at=now, actor=actor, subject=user_id
                    )
                )
        return EnableResult(user_id, changed)


async def _set_disabled(
    tx: AuthTransaction, user_id: str, values: dict[str, Any]
) -> tuple[bool, bool]:
    """(the user exists, this call changed disabled_at). Always writes the row (to itself
    when nothing changes), so the row lock is taken whatever the state."""
    column = users.c.disabled_at
    differs = column.is_(None) if values["disabled_at"] is not None else column.isnot(None)
    changed = await tx.conn.execute(
        update(users).where(users.c.id == user_id, differs).values(**values)
    )
    if int(changed.rowcount) == 1:
        return True, True
    # Unchanged: lock the row all the same (a no-op write), which also says if it exists.
    touched = await tx.conn.execute(
        update(users).where(users.c.id == user_id).values(disabled_at=users.c.disabled_at)
    )
    return int(touched.rowcount) == 1, False


async def _retire_account_tokens(tx: AuthTransaction, user_id: str, now: datetime) -> None:
    """Uses up the user's outstanding emailed links of every purpose in account_tokens
    (verification, reset, email change, "not me"): none may act for a disabled account."""
    await tx.conn.execute(
        update(account_tokens)
        .where(account_tokens.c.user_id == user_id, account_tokens.c.consumed_at.is_(None))
        .values(consumed_at=now)
    )
