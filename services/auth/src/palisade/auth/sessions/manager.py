"""The two-token session: issue, validate, rotate (with grace and replay detection), revoke.

Access token: 1 h, opaque, stored as SHA-256. Refresh token: 24 h (30 d with remember-me),
rotated on every use, never beyond the session's absolute expiry; a session whose refresh
token is not used within its lifetime ends (idle expiry).

Rotation table (decided under a row lock, so replicas agree):
  unused token                 -> rotate: successor refresh + new access token
  used <= grace seconds ago    -> the same successor again + a new access token (concurrency)
  used > grace seconds ago     -> replay: the whole family (session) is revoked, token_reused
Deliberate deviation from RFC 9700 4.14.2: the grace window, documented in SECURITY.md 25.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from palisade.auth.accounts.account_state import check_enabled, require_enabled
from palisade.auth.accounts.restrictions import DEFAULT as DEFAULT_RESTRICTIONS
from palisade.auth.accounts.restrictions import UnverifiedRestrictions
from palisade.auth.errors import (
    AccountDisabled,
    InvalidCredentials,
    InvalidToken,
    SessionNotFound,
    SessionRevoked,
    TokenExpired,
    TokenReused,
)
from palisade.auth.local_keys import LocalKeys
from palisade.auth.sessions.new_networks import DEFAULT_ALERT_CAP, AlertCap, observe_sign_in
from palisade.auth.sessions.revocation import RevocationNotice
from palisade.auth.sessions.revocation_outbox import RevocationOutbox
from palisade.auth.sessions.store import (
    LIVE_SESSIONS,
    REFRESH_TOKEN_AND_SESSION,
    AccessGrant,
    SessionRecords,
    SessionRow,
    refresh_token_and_session,
    session_from,
)
from palisade.auth.sessions.tokens import TokenKind, check_token, new_token, token_hash
from palisade.auth.store import AuthStore, AuthTransaction, LockedUser
from palisade.common.aad import associated_data
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient
from palisade.common.outbox import SecurityEvent

log = logging.getLogger("palisade.auth.sessions")
# last_seen_at is written at most this often by validations, not on every request.
_TOUCH_INTERVAL = timedelta(seconds=60)


@dataclass(frozen=True)
class SessionPolicy:
    access_seconds: int
    refresh_seconds: int
    remember_me_refresh_seconds: int
    grace_seconds: int
    absolute_seconds: int
    remember_me_absolute_seconds: int


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    expires_in: int
    session_id: str


@dataclass(frozen=True)
class SignInFacts:
    """What a login already read in its transaction, after taking the user row's lock, so
    sign_in does not read it again: the user's state from the locking statement itself, and
    the first workspace (None: no membership)."""

    locked: LockedUser
    workspace_id: str | None


@dataclass(frozen=True)
class ClientInfo:
    ip: str | None
    device: str | None


def _successor_aad(parent_hash: bytes) -> bytes:
    return associated_data("auth", "refresh_successor", parent_hash.hex())


class SessionManager:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        revocations: RevocationOutbox,
        policy: SessionPolicy,
        clock: Clock,
        local_keys: LocalKeys,
        restrictions: UnverifiedRestrictions = DEFAULT_RESTRICTIONS,
        alert_cap: AlertCap = DEFAULT_ALERT_CAP,
    ) -> None:
        self._store = store
        self._local_keys = local_keys  # names known networks (new_networks.py)
        self._alert_cap = alert_cap  # new-network alert emails per account and window
        self._crypto = crypto
        self._revocations = revocations
        self._policy = policy
        self._clock = clock
        self._restrictions = restrictions

    # -- issuing ------------------------------------------------------------------------------

    async def start(
        self,
        tx: AuthTransaction,
        *,
        user_id: str,
        workspace_id: str,
        remember_me: bool,
        client: ClientInfo,
        continues: SessionRow | None = None,
        locked: LockedUser | None = None,
    ) -> IssuedTokens:
        """Creates a session (a token family) inside the caller's transaction.

        continues: a live session of the same login this one carries on in another workspace
        (a workspace switch): the new session keeps its login time, absolute expiry and
        remember-me, so moving between workspaces never counts as a fresh login (recent auth)
        nor lengthens a session.

        locked: the user's state as this transaction read it in the statement that locked the
        user row (AuthTransaction.lock_password), checked instead of being read again.
        """
        # Under a share lock on the user row: a disable racing this login ends its session.
        if locked is None:
            await require_enabled(tx, user_id)
        else:
            check_enabled(locked)
        now = self._clock.now()
        policy = self._policy
        if continues is not None:
            remember_me = continues.remember_me
        absolute = now + timedelta(
            seconds=policy.remember_me_absolute_seconds if remember_me else policy.absolute_seconds
        )
        if continues is not None:
            absolute = continues.absolute_expires_at
        session_id = f"ses_{uuid.uuid4().hex}"
        await SessionRecords(tx).insert_session(
            SessionRow(
                id=session_id,
                user_id=user_id,
                workspace_id=workspace_id,
                created_at=now if continues is None else continues.created_at,
                last_seen_at=now,
                absolute_expires_at=absolute,
                remember_me=remember_me,
                ip=client.ip,
                device=client.device,
                revoked_at=None,
            )
        )
        access, refresh = new_token(TokenKind.ACCESS), new_token(TokenKind.REFRESH)
        access_expiry = await self._add_access_token(tx, access, session_id, now, absolute)
        await SessionRecords(tx).insert_refresh_token(
            token_hash=token_hash(refresh),
            session_id=session_id,
            now=now,
            expires_at=min(now + self._refresh_lifetime(remember_me), absolute),
        )
        return IssuedTokens(access, refresh, int((access_expiry - now).total_seconds()), session_id)

    async def sign_in(
        self,
        tx: AuthTransaction,
        *,
        user_id: str,
        remember_me: bool,
        client: ClientInfo,
        method: str,
        details: Mapping[str, str | int | bool | None] | None = None,
        facts: SignInFacts | None = None,
    ) -> IssuedTokens:
        """The end of every login: a session in the user's first workspace, and its event.
        facts: what the caller already read under the user row's lock (a password login)."""
        if facts is None:
            membership = await tx.primary_membership(user_id)
            workspace = None if membership is None else membership[0]
        else:
            workspace = facts.workspace_id
        if workspace is None:
            raise InvalidCredentials()
        workspace_id = workspace
        issued = await self.start(
            tx,
            user_id=user_id,
            workspace_id=workspace_id,
            remember_me=remember_me,
            client=client,
            locked=None if facts is None else facts.locked,
        )
        await tx.emit(
            SecurityEvent(
                type="session.login_succeeded",
                occurred_at=self._clock.now(),
                actor=f"user:{user_id}",
                subject=user_id,
                workspace_id=workspace_id,
                ip=client.ip,
                device=client.device,
                details={"session_id": issued.session_id, "method": method, **(details or {})},
            )
        )
        await self.observe_sign_in(
            tx,
            user_id=user_id,
            workspace_id=workspace_id,
            client=client,
            method=method,
            session_id=issued.session_id,
        )
        return issued

    async def observe_sign_in(
        self,
        tx: AuthTransaction,
        *,
        user_id: str,
        workspace_id: str,
        client: ClientInfo,
        method: str,
        session_id: str,
    ) -> bool:
        """New-network detection for a sign-in that made session_id (sessions/new_networks.py):
        sign_in calls it; so does any flow that signs a person in through start() (accepting an
        invitation). A brand-new account's first network is a silent baseline."""
        return await observe_sign_in(
            tx,
            self._local_keys,
            user_id=user_id,
            workspace_id=workspace_id,
            ip=client.ip,
            device=client.device,
            method=method,
            session_id=session_id,
            now=self._clock.now(),
            cap=self._alert_cap,
        )

    def _refresh_lifetime(self, remember_me: bool) -> timedelta:
        p = self._policy
        return timedelta(
            seconds=p.remember_me_refresh_seconds if remember_me else p.refresh_seconds
        )

    async def _add_access_token(
        self,
        tx: AuthTransaction,
        access: str,
        session_id: str,
        now: datetime,
        absolute: datetime,
    ) -> datetime:
        expiry = min(now + timedelta(seconds=self._policy.access_seconds), absolute)
        await SessionRecords(tx).insert_access_token(
            token_hash=token_hash(access), session_id=session_id, now=now, expires_at=expiry
        )
        return expiry

    # -- rotation -----------------------------------------------------------------------------

    async def refresh(self, refresh_token: str, client: ClientInfo) -> IssuedTokens:
        presented = check_token(refresh_token, TokenKind.REFRESH)
        successor = new_token(TokenKind.REFRESH)
        successor_ct = await self._successor_ct(presented, successor)
        access = new_token(TokenKind.ACCESS)
        replay: RevocationNotice | None = None
        async with self._store.transaction() as tx:
            now = self._clock.now()
            records = SessionRecords(tx)
            found = await records.lock_refresh_token(presented)
            if found is None:
                raise InvalidToken()
            token, session = found
            if session.revoked_at is not None:
                # Disabling ends every session; the token proves it was the holder's. A
                # deleted account (disabled too) is simply gone: its session was revoked.
                user = await tx.user(session.user_id)
                disabled = user is not None and user.disabled and not user.deleted
                raise AccountDisabled() if disabled else SessionRevoked()
            if now >= session.absolute_expires_at or now >= token.expires_at:
                raise TokenExpired()
            grace = timedelta(seconds=self._policy.grace_seconds)
            if token.rotated_at is not None and now - token.rotated_at > grace:
                replay = await self._revoke_in(
                    tx,
                    [session],
                    now,
                    "refresh_reuse",
                    actor=f"user:{session.user_id}",
                    client=client,
                    event_type="session.refresh_reuse_detected",
                )
            else:
                if token.rotated_at is None and successor_ct is None:
                    raise InvalidToken()  # not reached: a rotation is never undone
                access_expiry = await self._add_access_token(
                    tx, access, session.id, now, session.absolute_expires_at
                )
                if successor_ct is not None and token.rotated_at is None:
                    await records.mark_rotated(presented, now, successor_ct)
                    await records.insert_refresh_token(
                        token_hash=token_hash(successor),
                        session_id=session.id,
                        now=now,
                        expires_at=min(
                            now + self._refresh_lifetime(session.remember_me),
                            session.absolute_expires_at,
                        ),
                    )
                    stored_successor_ct = None
                else:
                    stored_successor_ct = token.successor_ct
                await records.touch_session(session.id, now, client.ip)
                await tx.emit(
                    SecurityEvent(
                        type="session.refreshed",
                        occurred_at=now,
                        actor=f"user:{session.user_id}",
                        subject=session.user_id,
                        workspace_id=session.workspace_id,
                        ip=client.ip,
                        device=client.device,
                        details={
                            "session_id": session.id,
                            "grace": stored_successor_ct is not None,
                        },
                    )
                )
        if replay is not None:  # committed: the family is gone on every replica
            await self._announce(replay)
            raise TokenReused()
        if stored_successor_ct is not None:
            [plain] = await self._crypto.decrypt([(stored_successor_ct, _successor_aad(presented))])
            successor = plain.decode()
        return IssuedTokens(
            access, successor, int((access_expiry - now).total_seconds()), session.id
        )

    async def _successor_ct(self, presented: bytes, successor: str) -> bytes | None:
        """The encrypted successor, made only if the token is live and unused: an unknown,
        dead or already rotated token costs no encryption (unauthenticated callers must not
        spend the crypto budget). Made before the locking transaction, so no network call
        happens while the row is locked; wasted only if a parallel refresh rotates first.
        """
        row = await self._store.reads.one(REFRESH_TOKEN_AND_SESSION, {"token_hash": presented})
        if row is None:
            raise InvalidToken()
        token, session = refresh_token_and_session(row)
        now = self._clock.now()
        if session.revoked_at is not None or token.rotated_at is not None:
            return None  # the locked decision below says which answer
        if now >= session.absolute_expires_at or now >= token.expires_at:
            raise TokenExpired()
        [successor_ct] = await self._crypto.encrypt(
            [(successor.encode(), _successor_aad(presented))]
        )
        return successor_ct

    # -- validation ---------------------------------------------------------------------------

    async def validate(self, access_token: str) -> AccessGrant:
        presented = check_token(access_token, TokenKind.ACCESS)
        async with self._store.transaction() as tx:
            grant = await SessionRecords(tx).access_grant(presented)
            if grant is None:
                raise InvalidToken()
            now = self._clock.now()
            if grant.session_revoked or grant.user_disabled:
                raise SessionRevoked()
            if now >= grant.expires_at or now >= grant.session_expires_at:
                raise TokenExpired()
            if now - grant.session_last_seen_at >= _TOUCH_INTERVAL:
                await SessionRecords(tx).touch_session(grant.session_id, now, None)
        # From the same statement's row: no extra read per validation.
        return replace(
            grant, restrictions=self._restrictions.of(email_verified=grant.email_verified)
        )

    # -- revocation ---------------------------------------------------------------------------

    async def revoke(
        self,
        *,
        user_id: str,
        session_ids: list[str] | None,
        keep: str | None,
        reason: str,
        actor: str,
        client: ClientInfo,
        event_type: str,
    ) -> int:
        """Ends the user's given sessions (or all, None), except `keep`; returns how many.
        One unit of work, run again from the start if the database breaks a lock cycle."""

        async def unit(tx: AuthTransaction) -> RevocationNotice:
            now = self._clock.now()
            records = SessionRecords(tx)
            # Lock order (sessions/store.py): the user row, exclusively, so no session is made
            # from one of these while they end (a workspace switch), then the sessions.
            await records.lock_user(user_id, exclusive=True)
            live = await records.lock_live_sessions(user_id, now)
            if session_ids is not None:
                wanted = set(session_ids)
                if not wanted <= {s.id for s in live}:
                    raise SessionNotFound()  # someone else's or already ended: same answer
                live = [s for s in live if s.id in wanted]
            targets = [s for s in live if s.id != keep]
            return await self._revoke_in(
                tx, targets, now, reason, actor=actor, client=client, event_type=event_type
            )

        notice = await self._store.run(unit)
        await self._announce(notice)
        return len(notice.session_ids)

    async def revoke_all_in(
        self,
        tx: AuthTransaction,
        *,
        user_id: str,
        keep: str | None,
        reason: str,
        actor: str,
        client: ClientInfo,
        event_type: str,
    ) -> RevocationNotice:
        """Ends all the user's live sessions but `keep` inside the caller's transaction, so
        they end with the change that causes it (a new password); announce() after commit.

        Locks the user row exclusively first (a no-op for the callers that already updated it:
        a first address proof, a disable, a new password): a session being made in parallel
        (a login, a workspace switch) either committed before, and is read and ended here, or
        waits and then finds what this transaction did. Then the sessions, in id order."""
        now = self._clock.now()
        records = SessionRecords(tx)
        await records.lock_user(user_id, exclusive=True)
        live = await records.lock_live_sessions(user_id, now)
        return await self._revoke_in(
            tx,
            [s for s in live if s.id != keep],
            now,
            reason,
            actor=actor,
            client=client,
            event_type=event_type,
        )

    async def revoke_where_in(
        self,
        tx: AuthTransaction,
        *,
        user_id: str,
        workspace_id: str | None = None,
        session_ids: Collection[str] | None = None,
        reason: str,
        actor: str,
        client: ClientInfo,
        event_type: str,
    ) -> RevocationNotice:
        """Ends the user's live sessions in one workspace and/or among session_ids (None: no
        such condition) inside the caller's transaction: a member removed, a workspace left
        for another. announce() after commit.

        Only those sessions are locked, in id order; the user row is not locked here: a member's
        removal holds the workspace row (FOR UPDATE), and a session made in that workspace
        meanwhile is worthless without the membership (validation joins it)."""
        now = self._clock.now()
        targets = await SessionRecords(tx).lock_live_sessions(
            user_id, now, workspace_id=workspace_id, session_ids=session_ids
        )
        return await self._revoke_in(
            tx, targets, now, reason, actor=actor, client=client, event_type=event_type
        )

    async def refresh_grants_in(
        self, tx: AuthTransaction, *, user_id: str, workspace_id: str, reason: str
    ) -> RevocationNotice:
        """Makes every gateway forget what it cached about the user's live sessions in the
        workspace, without ending them: their next request is validated again and carries
        what changed (a new role). Queued in the caller's transaction, published by the same
        durable relay as revocations (a notice naming sessions, and no token hashes); the
        sessions stay valid in the database. announce() after commit."""
        now = self._clock.now()
        live = await SessionRecords(tx).sessions_of(user_id, now)
        ids = tuple(s.id for s in live if s.workspace_id == workspace_id)
        notice = RevocationNotice((), ids, user_id, reason, now)
        if ids:
            await self._revocations.enqueue(tx, notice)
        return notice

    async def live_session(
        self, tx: AuthTransaction, session_id: str, *, user_id: str, exclusive_user: bool = False
    ) -> SessionRow | None:
        """The user's session, if it is live (not revoked, within its absolute expiry), for a
        transaction that carries it on (a workspace switch, an invitation accepted while
        signed in): locked in the module's lock order, the user row (shared; exclusive if the
        caller will update it, so it never has to upgrade a shared lock) and then the session
        row, and read only once both are held. So whatever ends the user's sessions (a first
        address proof, a disable, a new password, "sign out everywhere") either ran entirely
        before, and this finds the session ended, or waits for this transaction and then ends
        the session it makes too. None also for another user's session."""
        records = SessionRecords(tx)
        if not await records.lock_user(user_id, exclusive=exclusive_user):
            return None
        session = await records.lock_session(session_id)
        if session is None or session.user_id != user_id or session.revoked_at is not None:
            return None
        return session if self._clock.now() < session.absolute_expires_at else None

    async def announce(self, notice: RevocationNotice) -> None:
        """After the transaction of revoke_all_in() has committed."""
        await self._announce(notice)

    async def _revoke_in(
        self,
        tx: AuthTransaction,
        targets: list[SessionRow],
        now: datetime,
        reason: str,
        *,
        actor: str,
        client: ClientInfo,
        event_type: str,
    ) -> RevocationNotice:
        ended = await SessionRecords(tx).revoke_sessions([s.id for s in targets], now, reason)
        # Only what this transaction ended: a session another one ended first has had its
        # event and its notice (callers that need theirs ended check notice.session_ids).
        ids = ended.session_ids
        hashes = ended.access_token_hashes
        for session in (s for s in targets if s.id in ids):
            await tx.emit(
                SecurityEvent(
                    type=event_type,
                    occurred_at=now,
                    actor=actor,
                    subject=session.user_id,
                    workspace_id=session.workspace_id,
                    ip=client.ip,
                    device=client.device,
                    reason=reason,
                    details={"session_id": session.id},
                )
            )
        user_id = targets[0].user_id if targets else ""
        notice = RevocationNotice(hashes, ids, user_id, reason, now)
        if ids:  # committed with the revocation, published by the relay: never dropped
            await self._revocations.enqueue(tx, notice)
        return notice

    async def _announce(self, notice: RevocationNotice) -> None:
        """After commit: wakes the relay that publishes the notice (queued by _revoke_in)."""
        if notice.session_ids:
            self._revocations.notify()

    async def list(self, user_id: str) -> list[SessionRow]:
        params = {"user_id": user_id, "now": self._clock.now()}
        return [session_from(row) for row in await self._store.reads.all(LIVE_SESSIONS, params)]
