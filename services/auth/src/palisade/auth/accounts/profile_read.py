"""`GET /v1/me` in one statement: the user's sealed PII, role in the workspace, MFA status and
whether the address is verified.

The busiest authenticated read there is, so it is one prebuilt SELECT, run as a direct read
(palisade.common.direct_reads: autocommit, one round trip, straight on the driver) instead of
three transactions.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, bindparam, exists, func, select

from palisade.auth.mfa.store import totp_credentials
from palisade.auth.passkeys.store import passkeys
from palisade.auth.store import AuthStore, memberships, users


@dataclass(frozen=True)
class ProfileRow:
    email_ct: bytes
    name_ct: bytes
    role: str
    totp_enabled: bool  # confirmed, not a pending enrolment
    passkeys: int
    email_verified: bool = False


_PROFILE = (
    select(
        users.c.email_ct,
        users.c.name_ct,
        memberships.c.role,
        exists()
        .where(
            totp_credentials.c.user_id == users.c.id, totp_credentials.c.confirmed_at.is_not(None)
        )
        .label("totp_enabled"),
        select(func.count())
        .select_from(passkeys)
        .where(passkeys.c.user_id == users.c.id)
        .scalar_subquery()
        .label("passkeys"),
        users.c.email_verified_at,
    )
    .join_from(
        users,
        memberships,
        and_(
            memberships.c.user_id == users.c.id,
            memberships.c.workspace_id == bindparam("workspace_id"),
        ),
    )
    .where(users.c.id == bindparam("user_id"))
)


async def read_profile(store: AuthStore, user_id: str, workspace_id: str) -> ProfileRow | None:
    """None when the user is gone or no longer a member of the workspace."""
    row = await store.reads.one(_PROFILE, {"user_id": user_id, "workspace_id": workspace_id})
    if row is None:
        return None
    email_ct, name_ct, role, totp_enabled, passkey_count, verified_at = row
    return ProfileRow(
        email_ct=bytes(email_ct),
        name_ct=bytes(name_ct),
        role=role,
        totp_enabled=bool(totp_enabled),
        passkeys=int(passkey_count),
        email_verified=verified_at is not None,
    )
