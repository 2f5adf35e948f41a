"""Asking the apikeys service to revoke a person's API keys, durably (SECURITY.md 26, 44, 45).

Whoever ends a person's right to their keys (a member removed from a workspace, an account
disabled or deleted) calls request_key_revocation() inside the transaction that makes the
change. It writes one row to `key_revocation_requests` (migration 0009): the request commits
with the change or not at all. KeyRevocationRelay (key_revocation_relay.py) then calls
apikeys' RevokeKeysOfUser for each row and deletes it only once apikeys has answered OK; while
apikeys is down the rows wait and go out when it is back. Nothing is lost and nothing needs a
caller to remember a second step.

    async with store.transaction() as tx:
        ...                                          # the membership row deleted, say
        await request_key_revocation(
            tx, user_id=user_id, workspace_id=workspace_id, reason=MEMBER_REMOVED
        )

The request also marks the transaction's pooled connection, so the relay of this process is
woken as soon as the connection goes back to the pool (after the commit) instead of at its
next poll (see KeyRevocationRelay.running). Rows hold ids and a reason, never PII.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, Index, Integer, String, Table, insert

from palisade.auth.store import TS, AuthTransaction, metadata

MEMBER_REMOVED = "member_removed"
ACCOUNT_DISABLED = "account_disabled"
ACCOUNT_DELETED = "account_deleted"
# The address's owner proved it for the first time (accounts/address_proof.py): keys made by
# whoever held the never-verified account before end.
ACCOUNT_RECLAIMED = "account_reclaimed"
# The reasons apikeys accepts (and stores as each key's revocation reason).
REASONS = frozenset({MEMBER_REMOVED, ACCOUNT_DISABLED, ACCOUNT_DELETED, ACCOUNT_RECLAIMED})

# The flag request_key_revocation leaves in the connection's pool record (its `info`); the
# relay's pool "checkin" listener takes it off and wakes the relay.
WAKE_FLAG = "palisade.auth.key_revocation_requested"

_USER_ID = re.compile(r"usr_[0-9a-f]{32}")
_WORKSPACE_ID = re.compile(r"ws_[0-9a-f]{32}")

key_revocation_requests = Table(
    "key_revocation_requests",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_id", String(40), nullable=False),
    Column("workspace_id", String(40), nullable=True),  # None: every workspace
    Column("reason", String(32), nullable=False),
    # Wall-clock time of the request (the relay's lag metric); ids and order only otherwise.
    Column("created_at", TS, nullable=False),
    # NULL: never tried, due now (or, for a scheduled sweep, the time it becomes due). Then a
    # relay's lease end while it is being sent, or the time of the next retry after a failure.
    Column("next_attempt_at", TS, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("last_error", String(200), nullable=True),
)
Index("ix_key_revocation_requests_next_attempt_at", key_revocation_requests.c.next_attempt_at)


async def request_key_revocation(
    tx: AuthTransaction, *, user_id: str, workspace_id: str | None, reason: str
) -> None:
    """Queues, in the caller's transaction, the revocation of every live API key the user
    created: in workspace_id, or in every workspace when it is None.

    ValueError for a reason apikeys does not accept or ids that are not Palisade ids: those
    are bugs of the caller, and a row apikeys refuses would never go out. An empty
    workspace_id is refused too (the wire's "every workspace"): say None to mean it.
    """
    await _queue(tx, user_id=user_id, workspace_id=workspace_id, reason=reason, due=None)
    tx.conn.info[WAKE_FLAG] = True


async def schedule_key_revocation(
    tx: AuthTransaction,
    *,
    user_id: str,
    workspace_id: str | None,
    reason: str,
    due: datetime,
    wall_delay: timedelta,
) -> None:
    """Like request_key_revocation, but not sent before `due` (the relay's clock): a second
    sweep after the moment no gateway can still act on a cached session of the person, for
    a key created through such a cache after the first request was answered.
    wall_delay: the same delay in wall-clock time, for the lag metric (counted from `due`)."""
    await _queue(
        tx,
        user_id=user_id,
        workspace_id=workspace_id,
        reason=reason,
        due=due,
        created_at=datetime.now(UTC) + wall_delay,
    )


async def _queue(
    tx: AuthTransaction,
    *,
    user_id: str,
    workspace_id: str | None,
    reason: str,
    due: datetime | None,
    created_at: datetime | None = None,
) -> None:
    if reason not in REASONS:
        raise ValueError(f"unknown key revocation reason {reason!r}")
    if not _USER_ID.fullmatch(user_id):
        raise ValueError("user_id is not a user id")
    if workspace_id is not None and not _WORKSPACE_ID.fullmatch(workspace_id):
        raise ValueError("workspace_id is not a workspace id (None means every workspace)")
    await tx.conn.execute(
        insert(key_revocation_requests).values(
            id=f"krq_{uuid.uuid4().hex}",
            user_id=user_id,
            workspace_id=workspace_id,
            reason=reason,
            # The transaction carries no clock; due-ness never depends on this value (a new
            # row is due at once: next_attempt_at NULL, or at `due`), only the lag metric does.
            created_at=created_at or datetime.now(UTC),
            next_attempt_at=due,
            attempts=0,
        )
    )
