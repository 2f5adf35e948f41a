"""The one check every new session passes: the account is not disabled, decided under a lock.

Each way in (password, MFA step, magic link, passkey) looks at users.disabled_at itself and
answers account_disabled once the credential is proven. This is the guard behind them for
the race: a disable that commits between that look and the new session. The check reads the
user row FOR SHARE (Postgres), so it and `palisade-auth users disable` (which updates that row
first, then ends the user's sessions) serialise: either the disable waits for this
transaction and then sees, and ends, the session it made, or this waits for the disable and
then refuses. SQLite's BEGIN IMMEDIATE already runs write transactions one at a time.
"""

from __future__ import annotations

from sqlalchemy import select

from palisade.auth.errors import AccountDisabled, InvalidCredentials
from palisade.auth.store import AuthTransaction, LockedUser, users


async def require_enabled(tx: AuthTransaction, user_id: str) -> None:
    """Raises AccountDisabled if the user is disabled (InvalidCredentials if gone or
    deleted); holds a share lock on the user row until the transaction ends."""
    query = select(users.c.disabled_at, users.c.deleted_at).where(users.c.id == user_id)
    if tx.locks_rows:
        query = query.with_for_update(read=True)
    row = (await tx.conn.execute(query)).first()
    if row is None or row.deleted_at is not None:  # a deleted account is gone for good
        raise InvalidCredentials()
    if row.disabled_at is not None:
        raise AccountDisabled()


def check_enabled(locked: LockedUser) -> None:
    """require_enabled for a caller that already holds the user row's lock and read its state
    in the statement that took it (AuthTransaction.lock_password): the same answers."""
    if locked.deleted:
        raise InvalidCredentials()
    if locked.disabled:
        raise AccountDisabled()
