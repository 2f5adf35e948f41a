"""The relay: sends due outbox emails, retries failures with backoff, gives up after a limit.

Delivery is at-least-once. A relay first *claims* due rows in a short transaction (Postgres:
SELECT ... FOR UPDATE SKIP LOCKED, so replicas take disjoint rows without waiting; SQLite:
BEGIN IMMEDIATE makes the transaction exclusive), counting the attempt and moving
next_attempt_at one lease ahead. It then decrypts and sends with no transaction open (a slow
SMTP server must not hold locks, and on SQLite the lock is the whole database), and marks
each row sent or failed. If the process dies between send and mark, the lease runs out and
the row is sent again: a duplicate email, never a lost one. A relay stops sending from its
batch once its lease has run out, since another replica may by then have claimed the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.auth.mail.message import parse_message
from palisade.auth.mail.outbox import PENDING, MailQueue, mail_outbox, message_aad
from palisade.auth.mail.senders import MailDeliveryFailed, Mailer
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, SubjectErased
from palisade.common.outbox_claims import LeasedOutbox, exponential_backoff
from palisade.common.tasks import running_in_background

log = logging.getLogger("palisade.auth.mail")

_FIRST_RETRY_SECONDS = 30
_MAX_RETRY_SECONDS = 3600
# Due emails, those due longest first.
_OUTBOX = LeasedOutbox(
    mail_outbox,
    columns=(mail_outbox.c.message_ct,),
    order_by=(mail_outbox.c.next_attempt_at, mail_outbox.c.id),
    pending=PENDING,
)


def retry_delay(attempts: int) -> timedelta:
    """Wait after the `attempts`-th failed attempt: 30 s, 60 s, 120 s, ... at most 1 h."""
    return exponential_backoff(
        attempts, first_seconds=_FIRST_RETRY_SECONDS, max_seconds=_MAX_RETRY_SECONDS
    )


def _reason(error: Exception) -> str:
    """What goes to last_error and the log: class names (and SMTP codes), never text."""
    if isinstance(error, MailDeliveryFailed):
        return f"MailDeliveryFailed({error.reason})"[:200]
    return type(error).__name__[:200]


@dataclass(frozen=True)
class _Claim:
    id: str
    attempt: int  # this attempt's number, from 1
    message_ct: bytes


class MailRelay:
    """Sends the mail outbox through a Mailer; see the module docstring for the guarantees."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        crypto: CryptoClient,
        mailer: Mailer,
        clock: Clock,
        queue: MailQueue,
        poll_seconds: float,
        max_attempts: int,
        batch_size: int = 20,
        lease_seconds: float = 300.0,
    ) -> None:
        if poll_seconds <= 0 or lease_seconds <= 0 or max_attempts < 1 or batch_size < 1:
            raise ValueError("poll_seconds, lease_seconds, max_attempts, batch_size must be > 0")
        self._engine = engine
        self._crypto = crypto
        self._mailer = mailer
        self._clock = clock
        self._queue = queue
        self._poll_seconds = poll_seconds
        self._max_attempts = max_attempts
        self._batch_size = batch_size
        # How long a claim keeps other relays off a row. It must exceed the longest single
        # send (crypto timeout + SMTP timeouts); a batch stops starting sends once it is over.
        self._lease = timedelta(seconds=lease_seconds)

    async def run_once(self) -> int:
        """Claims up to batch_size due emails and tries each once; returns how many were sent."""
        _claimed, sent = await self._relay_batch()
        return sent

    async def run(self) -> None:
        """Relays until cancelled. No error stops it: it logs and tries again at the next poll."""
        while True:
            more = False
            try:
                claimed, sent = await self._relay_batch()
                # A full batch that made progress: more may be due, go on without waiting.
                more = claimed >= self._batch_size and sent > 0
            except Exception:
                # Database errors name tables and ids, not message content.
                log.exception("mail relay pass failed; will retry")
            if not more:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_seconds):
                        await self._queue.wait()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Runs the relay as a background task for the duration of the block."""
        # running_in_background cancels until the task has ended: aiosmtplib can swallow one.
        async with running_in_background(self.run(), name="palisade-mail-relay"):
            yield

    async def _relay_batch(self) -> tuple[int, int]:
        now = self._clock.now()
        lease_end = now + self._lease
        claims = await self._claim(now, lease_end)
        sent = 0
        for claim in claims:
            if self._clock.now() >= lease_end:
                # Another relay may own the rest now; they are due again already.
                break
            try:
                [raw] = await self._crypto.decrypt([(claim.message_ct, message_aad(claim.id))])
                await self._mailer.send(parse_message(raw))
            except Exception as error:  # any failure of one email must not stop the others
                await self._record_failure(claim, error)
                continue
            await self._mark_sent(claim.id)
            sent += 1
        return len(claims), sent

    async def _claim(self, now: datetime, lease_end: datetime) -> list[_Claim]:
        # Out of attempts (the last one's process died before marking it) or, by a bug,
        # nothing to send: given up in the claim rather than tried forever.
        batch = await _OUTBOX.claim(
            self._engine,
            now=now,
            lease_end=lease_end,
            limit=self._batch_size,
            give_up=lambda r: r.attempts >= self._max_attempts or not r.message_ct,
            give_up_values={"failed_at": now, "message_ct": None},
        )
        for mail_id in batch.given_up:
            log.warning("mail given up after its last attempt", extra={"mail_id": mail_id})
        return [_Claim(c.id, c.attempt, bytes(c.row.message_ct)) for c in batch.claims]

    async def _mark_sent(self, mail_id: str) -> None:
        async with self._engine.begin() as conn:
            # Dropping the ciphertext removes the address and the single-use token for good.
            # Sent beats failed: a relay that outlived its lease may deliver after another
            # relay gave the row up, and the person did get the email.
            await conn.execute(
                update(mail_outbox)
                .where(mail_outbox.c.id == mail_id, mail_outbox.c.sent_at.is_(None))
                .values(sent_at=self._clock.now(), failed_at=None, message_ct=None)
            )

    async def _record_failure(self, claim: _Claim, error: Exception) -> None:
        now = self._clock.now()
        reason = _reason(error)
        values: dict[str, object] = {"last_error": reason}
        # An email sealed under the key of an account deleted since (auth/subjects.py) can
        # never be opened again: dropped, not retried.
        final = claim.attempt >= self._max_attempts or isinstance(error, SubjectErased)
        if final:
            values.update(failed_at=now, message_ct=None)
        else:
            values["next_attempt_at"] = now + retry_delay(claim.attempt)
        async with self._engine.begin() as conn:
            # attempts == ours: if our lease ran out and another relay claimed the row, its
            # outcome is the one that counts.
            await conn.execute(
                update(mail_outbox)
                .where(_OUTBOX.held(claim.id, claim.attempt), PENDING)
                .values(**values)
            )
        extra = {"mail_id": claim.id, "attempt": claim.attempt, "reason": reason}
        if final:
            log.warning("mail given up after %d attempts", claim.attempt, extra=extra)
        else:
            log.warning("mail delivery failed; will retry", extra=extra)
