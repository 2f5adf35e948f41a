""" "This wasn't me": the confirm step of a new-network alert's link (POST /v1/auth/not-me).

The link (`/auth/not-me?token=plsd_nm_…`, from sessions/new_network_alerts.py) is a single-use
token of the core in links/single_use.py. Confirming it ends every session of the account at
once, the one the stranger made included, and uses up every other "not me" link the account
was sent (one report is enough; a replayed link must not turn into a way to sign the owner
out again and again). Every network the account knew is forgotten (the stranger's among them,
and the link does not say which one that was), so every sign-in from then on alerts until its
network is known again, the owner's own networks included, once each. The page then tells the
person to reset their password: the stranger had it, or had their email. An unknown, used,
expired or malformed token gets one answer, 400 invalid_not_me_link, and the gateway spends
the client's lookup budget on every try.

Lock order (auth's one order): the token's owner is read without a lock, the user row is
locked exclusively (no session can be made while they end), then the token is consumed and
the sessions locked in id order.
"""

from __future__ import annotations

from typing import NoReturn

from palisade.auth.errors import InvalidNotMeLink
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import ACCOUNT_TOKENS, NOT_ME
from palisade.auth.sessions.manager import ClientInfo, SessionManager
from palisade.auth.sessions.new_networks import forget_networks
from palisade.auth.sessions.revocation import RevocationNotice
from palisade.auth.sessions.store import SessionRecords
from palisade.auth.store import AuthStore, AuthTransaction
from palisade.common.clock import Clock
from palisade.common.errors import PalisadeError
from palisade.common.outbox import SecurityEvent


class NotMeReports:
    def __init__(self, *, store: AuthStore, sessions: SessionManager, clock: Clock) -> None:
        self._store = store
        self._sessions = sessions
        self._clock = clock
        self._tokens = SingleUseTokens(table=ACCOUNT_TOKENS, purpose=NOT_ME, clock=clock)

    @property
    def tokens(self) -> SingleUseTokens:
        return self._tokens

    async def confirm(self, *, token: str, client: ClientInfo) -> int:
        """Ends every session of the link's account; returns how many ended."""
        try:
            digest = self._tokens.check(token)
        except PalisadeError:
            _invalid()

        async def unit(tx: AuthTransaction) -> RevocationNotice:
            owner = await self._tokens.owner(tx, digest)
            if owner is None:
                _invalid()
            await SessionRecords(tx).lock_user(owner, exclusive=True)
            redeemed = await self._tokens.redeem(tx, token, retire_siblings=True, owner=owner)
            if redeemed is None:  # used, expired, or lost the race for it
                _invalid()
            await forget_networks(tx, owner, now=self._clock.now())
            notice = await self._sessions.revoke_all_in(
                tx,
                user_id=owner,
                keep=None,
                reason="not_me",
                actor=f"user:{owner}",
                client=client,
                event_type="session.revoked",
            )
            await tx.emit(
                SecurityEvent(
                    type="session.not_me_reported",
                    occurred_at=self._clock.now(),
                    actor=f"user:{owner}",
                    subject=owner,
                    ip=client.ip,
                    device=client.device,
                    details={"sessions_ended": len(notice.session_ids)},
                )
            )
            return notice

        notice = await self._store.run(unit)
        await self._sessions.announce(notice)
        return len(notice.session_ids)


def _invalid() -> NoReturn:
    raise InvalidNotMeLink()
