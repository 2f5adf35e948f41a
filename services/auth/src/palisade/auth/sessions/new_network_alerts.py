"""The relay of new-network alerts: one email per `new_network_alerts` row, with a "this
wasn't me" link.

A login that came from a new network (new_networks.py) leaves a row; this relay, after the
login's commit, claims rows with a lease (palisade.common.outbox_claims: replicas share the
work, never double it), reads the account's sealed address (one Decrypt), composes the email
(time, IP, location, device, method) with a fresh `plsd_nm_` token from the single-use token
core, seals it, and in one transaction stores the token, queues the email and deletes the row.
If the lease ran out meanwhile and another relay holds the row, that transaction changes
nothing, so an alert is emailed once. Crypto down: the row waits with a backoff (1 s doubling
to 5 min) and goes out when crypto is back; nothing is lost, nothing written in plaintext.

An account that is gone or disabled by the time its alert goes out gets none (its row is
dropped). The link's confirm step is accounts/not_me.py.

A row of kind PAUSED (the sign-in that went past the account's cap, new_networks.py) is
emailed the same way, as the "further alerts are paused until <time>" email, with its own
"this wasn't me" link; sign-ins withheld by the cap leave no row at all.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import ACCOUNT_TOKENS, NOT_ME
from palisade.auth.mail import MailQueue
from palisade.auth.mail.message import OutgoingEmail
from palisade.auth.mail.templates import new_sign_in_email, new_sign_ins_paused_email
from palisade.auth.sessions.geo import Locator
from palisade.auth.sessions.new_networks import (
    DEFAULT_ALERT_CAP,
    PAUSED,
    WAKE_FLAG,
    new_network_alerts,
)
from palisade.auth.store import AuthStore
from palisade.common.aad import associated_data
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient
from palisade.common.outbox_claims import Claim, LeasedOutbox, exponential_backoff
from palisade.common.relay_loop import Wakeup, relay_forever
from palisade.common.tasks import running_in_background

log = logging.getLogger("palisade.auth.new_network_alerts")

NOT_ME_PATH = "/auth/not-me"
_T = new_network_alerts
_OUTBOX = LeasedOutbox(
    _T,
    columns=(
        _T.c.user_id,
        _T.c.occurred_at,
        _T.c.ip,
        _T.c.device,
        _T.c.method,
        _T.c.kind,
        _T.c.paused_until,
    ),
    order_by=(_T.c.created_at, _T.c.id),
    due_when_unset=True,
)


@dataclass(frozen=True)
class NotMePolicy:
    public_base_url: str
    link_seconds: int  # how long a "this wasn't me" link works
    alerts_per_day: int = DEFAULT_ALERT_CAP.per_window  # the cap the pause email names

    def link(self, token: str) -> str:
        return f"{self.public_base_url.rstrip('/')}{NOT_ME_PATH}?token={quote(token)}"


def retry_delay(attempts: int) -> timedelta:
    return exponential_backoff(attempts, first_seconds=1, max_seconds=300)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sent = Counter(
            "palisade_auth_new_network_alerts_queued",
            "New-network sign-in alerts whose email was queued.",
            registry=registry,
        )
        self.failures = Counter(
            "palisade_auth_new_network_alert_failures",
            "Failed attempts to compose a new-network alert, by error class (retried).",
            ("reason",),
            registry=registry,
        )
        self.depth = Gauge(
            "palisade_auth_new_network_alerts_pending",
            "New-network alerts not yet queued as email.",
            registry=registry,
        )


class NewNetworkAlertRelay:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        store: AuthStore,
        crypto: CryptoClient,
        mail: MailQueue,
        locator: Locator,
        policy: NotMePolicy,
        clock: Clock,
        registry: CollectorRegistry | None = None,
        poll_seconds: float = 2.0,
        batch_size: int = 20,
        lease_seconds: float = 60.0,
    ) -> None:
        self._engine = engine
        self._store = store
        self._crypto = crypto
        self._mail = mail
        self._locator = locator
        self._policy = policy
        self._clock = clock
        self._tokens = SingleUseTokens(table=ACCOUNT_TOKENS, purpose=NOT_ME, clock=clock)
        self._metrics = _Metrics(registry or CollectorRegistry())
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._lease = timedelta(seconds=lease_seconds)
        self._wakeup = Wakeup()

    def notify(self) -> None:
        self._wakeup.notify()

    async def run_once(self) -> int:
        """One pass over the due alerts; returns how many emails it queued."""
        _claimed, queued = await self._pass_counts()
        return queued

    async def _pass_counts(self) -> tuple[int, int]:
        queued = 0
        now = self._clock.now()
        batch = await _OUTBOX.claim(
            self._engine, now=now, lease_end=now + self._lease, limit=self._batch_size
        )
        for claim in batch.claims:
            try:
                queued += await self._send(claim)
            except Exception as error:  # one alert's failure must not hold back the others
                await self._failed(claim, error)
        if queued:
            self._mail.notify()
        with contextlib.suppress(Exception):
            async with self._engine.connect() as conn:
                pending = await conn.execute(select(func.count()).select_from(_T))
                self._metrics.depth.set(pending.scalar_one())
        return len(batch.claims), queued

    async def _pass(self) -> bool:
        claimed, queued = await self._pass_counts()
        return claimed >= self._batch_size and queued > 0

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Runs the relay for the block, woken when a login that raised an alert commits."""
        relay = relay_forever(
            self._pass,
            wakeup=self._wakeup,
            poll_seconds=self._poll_seconds,
            log=log,
            what="new-network alert relay",
        )
        async with (
            self._wakeup.ring_on_checkin(self._engine, WAKE_FLAG),
            running_in_background(relay, name="palisade-new-network-alerts"),
        ):
            yield

    async def _send(self, claim: Claim) -> int:
        row = claim.row
        async with self._store.transaction() as tx:
            user = await tx.user(row.user_id)
        if user is None or user.disabled:
            await self._drop(claim)
            return 0
        [address] = await self._crypto.decrypt(
            [(user.email_ct, associated_data("auth", "user", user.id, "email"))]
        )
        token = self._tokens.new_token()
        email = self._compose(row, to=address.decode(), link=self._policy.link(token))
        [sealed] = await self._mail.seal_many([email.for_user(user.id)])  # its subject key
        async with self._store.transaction() as tx:
            taken = await tx.conn.execute(delete(_T).where(_OUTBOX.held(claim.id, claim.attempt)))
            if taken.rowcount != 1:
                return 0  # another relay holds it now: its attempt is the one that counts
            if sealed is None:
                log.warning("new-network alert not sent: the address cannot be delivered to")
                return 0
            await self._tokens.issue(
                tx,
                token=token,
                user_id=user.id,
                lifetime=timedelta(seconds=self._policy.link_seconds),
                retire_siblings=False,  # each alert's link works for its own sign-in
            )
            await self._mail.enqueue(tx, sealed)
        self._metrics.sent.inc()
        return 1

    def _compose(self, row: Row[tuple[Any, ...]], *, to: str, link: str) -> OutgoingEmail:
        """The alert's email: the usual one, or (kind PAUSED) the one that says until when
        further alerts are paused."""
        occurred_at: datetime = row.occurred_at
        facts = {
            "to": to,
            "link": link,
            "when": _utc(occurred_at),
            "ip": row.ip or "",
            "location": self._locator.locate(row.ip),
            "device": row.device or "",
            "method": row.method,
            "days": max(1, self._policy.link_seconds // 86400),
        }
        if row.kind == PAUSED and row.paused_until is not None:
            return new_sign_ins_paused_email(
                **facts,
                until=_utc(row.paused_until),
                per_day=self._policy.alerts_per_day,
            )
        return new_sign_in_email(**facts)

    async def _drop(self, claim: Claim) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(_T).where(_OUTBOX.held(claim.id, claim.attempt)))

    async def _failed(self, claim: Claim, error: Exception) -> None:
        reason = type(error).__name__[:200]
        self._metrics.failures.labels(reason).inc()
        log.warning(
            "new-network alert not composed; will retry",
            extra={"row_id": claim.id, "attempt": claim.attempt, "reason": reason},
        )
        with contextlib.suppress(Exception):
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(_T)
                    .where(_OUTBOX.held(claim.id, claim.attempt))
                    .values(
                        next_attempt_at=self._clock.now() + retry_delay(claim.attempt),
                        last_error=reason,
                    )
                )


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
