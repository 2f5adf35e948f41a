"""Password-reset links: the reset purpose of the single-use token core, and what a completed
reset retires.

A reset token is a `plsd_pr_…` token of the core (single_use.py) in account_tokens: 256 bits
from the CSPRNG, stored as SHA-256, valid 30 minutes by default, used up by one conditional
UPDATE. Issuing one retires the user's older reset tokens, so only the newest email works.
The emailed link opens the gateway's page `/auth/reset-password?token=…`; only its POST to
the confirm route uses the token, so link scanners burn nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from sqlalchemy import select

from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import (
    ACCOUNT_TOKENS,
    EMAIL_CHANGE,
    EMAIL_VERIFICATION,
    MAGIC_LINK,
    MAGIC_LINK_TABLE,
    PASSWORD_RESET,
    account_tokens,
)
from palisade.auth.store import AuthTransaction
from palisade.common.clock import Clock

CONFIRM_PAGE = "/auth/reset-password"


def reset_tokens(clock: Clock) -> SingleUseTokens:
    return SingleUseTokens(table=ACCOUNT_TOKENS, purpose=PASSWORD_RESET, clock=clock)


def reset_link(public_base_url: str, token: str) -> str:
    return f"{public_base_url.rstrip('/')}{CONFIRM_PAGE}?token={quote(token)}"


@dataclass(frozen=True)
class ResetTokenState:
    """A stored reset token as it stands, read without using it up."""

    user_id: str
    expires_at: datetime
    consumed: bool

    def usable(self, now: datetime) -> bool:
        # The core's redeem condition (expires_at > now, not consumed), read-only.
        return not self.consumed and self.expires_at > now


async def reset_token_state(tx: AuthTransaction, token_hash: bytes) -> ResetTokenState | None:
    """The reset token with this hash, or None (never issued, or of another purpose).

    A look before the work (the policy check, the second factor, the Argon2id hash) that
    changes nothing: the token is used up only by the core's conditional UPDATE, in the
    transaction that sets the password.
    """
    row = (
        await tx.conn.execute(
            select(
                account_tokens.c.user_id,
                account_tokens.c.expires_at,
                account_tokens.c.consumed_at,
            ).where(
                account_tokens.c.token_hash == token_hash,
                account_tokens.c.purpose == PASSWORD_RESET.name,
            )
        )
    ).first()
    if row is None:
        return None
    return ResetTokenState(row.user_id, row.expires_at, row.consumed_at is not None)


class LinksRetiredByReset:
    """The emailed links a completed reset voids, besides the reset token itself (the core
    retires the user's other reset tokens when it is redeemed): magic links, email
    verification links, and email-change confirmations (one sent to an address someone
    added while holding the account must not outlive the owner taking it back)."""

    def __init__(self, clock: Clock) -> None:
        self._cores = (
            SingleUseTokens(table=MAGIC_LINK_TABLE, purpose=MAGIC_LINK, clock=clock),
            SingleUseTokens(table=ACCOUNT_TOKENS, purpose=EMAIL_VERIFICATION, clock=clock),
            SingleUseTokens(table=ACCOUNT_TOKENS, purpose=EMAIL_CHANGE, clock=clock),
        )

    async def retire(self, tx: AuthTransaction, user_id: str) -> None:
        for core in self._cores:
            await core.retire(tx, user_id)
