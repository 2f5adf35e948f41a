"""The mail outbox: an email is queued in the same transaction as the change that causes it.

A sign-in link is useless if its token did not commit, and a committed token whose email was
lost leaves the person waiting: so the email row commits (or rolls back) with the change, and
MailRelay sends it afterwards, retrying until the mailer accepts it.

The stored message is the whole RFC 5322 message (recipient address: PII; sign-in token:
a secret), encrypted by the crypto service and bound by associated data to its row id, so a
database reader sees neither and a ciphertext copied into another row fails to open. The
relay deletes it once sent or given up on.

An email addressed to an account (OutgoingEmail.user_id) is sealed under that user's subject
key and its row names the user (user_id, migration 0013): deleting the account drops the
emails still queued for it, and shredding the subject makes any copy of them unreadable.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from email import policy

from sqlalchemy import Column, Index, Integer, LargeBinary, String, Table, and_, insert

from palisade.auth.mail.message import OutgoingEmail, build_message
from palisade.auth.store import AuthTransaction, metadata
from palisade.auth.subjects import user_subject
from palisade.common.aad import associated_data
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, EncryptInput
from palisade.common.db import UTCDateTime

_TS = UTCDateTime()
# The crypto service refuses larger items (its max_item_bytes, 64 KiB by default); our
# messages are a few KiB, so this is a guard against a template bug, not a working limit.
MAX_MESSAGE_BYTES = 64 * 1024
# Emails per Encrypt call in seal_many (the crypto service takes 1000 items by default).
SEAL_BATCH = 500

mail_outbox = Table(
    "mail_outbox",
    metadata,
    Column("id", String(40), primary_key=True),  # mail_<uuid hex>; also the Message-ID
    Column("created_at", _TS, nullable=False),
    # Due time of the next attempt; while a relay holds a row, the end of its lease.
    Column("next_attempt_at", _TS, nullable=False),
    Column("attempts", Integer, nullable=False),  # attempts started (a crash counts as one)
    Column("sent_at", _TS, nullable=True),
    Column("failed_at", _TS, nullable=True),  # gave up after max_attempts
    Column("last_error", String(200), nullable=True),  # an exception class name, never text
    Column("message_ct", LargeBinary, nullable=True),  # NULL once sent or failed
    # The account the email is addressed to (NULL: none, or not known); migration 0013.
    Column("user_id", String(40), nullable=True),
)
# Partial: sent and failed rows (the vast majority, kept as a delivery record) stay out of
# the index, so finding due mail costs the same after a million emails as after ten.
PENDING = and_(mail_outbox.c.sent_at.is_(None), mail_outbox.c.failed_at.is_(None))
Index(
    "ix_mail_outbox_next_attempt_at",
    mail_outbox.c.next_attempt_at,
    postgresql_where=PENDING,
    sqlite_where=PENDING,
)
# An account's deletion drops its pending emails by this.
Index(
    "ix_mail_outbox_user_id",
    mail_outbox.c.user_id,
    postgresql_where=PENDING,
    sqlite_where=PENDING,
)


def message_aad(mail_id: str) -> bytes:
    """Associated data binding a message ciphertext to its outbox row."""
    return associated_data("auth", "mail_outbox", mail_id, "message")


def _item(raw: bytes, mail_id: str, user_id: str | None) -> EncryptInput:
    """The Encrypt item of a message: under its recipient's subject key when it has one."""
    if user_id is None:
        return (raw, message_aad(mail_id))
    return (raw, message_aad(mail_id), user_subject(user_id))


@dataclass(frozen=True)
class SealedEmail:
    """An email ready to enqueue: its row id, the encrypted message, and the account it is
    addressed to (its subject sealed it)."""

    id: str
    message_ct: bytes = field(repr=False)
    user_id: str | None = None


class MailQueue:
    """Seals emails (encrypts them) and adds them to the caller's transaction.

    Usage, so that no network call happens while a transaction is open:

        sealed = await queue.seal(OutgoingEmail(to=..., subject=..., text=...))
        async with store.transaction() as tx:
            ...                                   # the change the email is about
            await queue.enqueue(tx, sealed)
        queue.notify()                            # after commit: wake this process's relay
    """

    def __init__(self, *, crypto: CryptoClient, clock: Clock, from_address: str) -> None:
        self._crypto = crypto
        self._clock = clock
        self._from = from_address
        self._wake = asyncio.Event()
        # Fail at start-up, not at the first email, if mail_from is malformed.
        build_message(
            OutgoingEmail(to="check@example.com", subject="", text=""),
            from_address=from_address,
            date=clock.now(),
        )

    async def seal(self, email: OutgoingEmail) -> SealedEmail:
        """Builds and encrypts the message (one crypto call); raises ValueError for bad
        headers and palisade.common.errors.Unavailable if crypto is down (fail closed)."""
        mail_id = f"mail_{uuid.uuid4().hex}"
        message = build_message(
            email, from_address=self._from, date=self._clock.now(), message_id=mail_id
        )
        # LF line ends: parse_message reads it back exactly; the mailer writes the wire form.
        raw = message.as_bytes(policy=policy.default)
        if len(raw) > MAX_MESSAGE_BYTES:
            raise ValueError(f"email is {len(raw)} bytes, more than {MAX_MESSAGE_BYTES}")
        [ciphertext] = await self._crypto.encrypt([_item(raw, mail_id, email.user_id)])
        return SealedEmail(id=mail_id, message_ct=ciphertext, user_id=email.user_id)

    async def seal_many(self, emails: Sequence[OutgoingEmail]) -> list[SealedEmail | None]:
        """seal() for several emails in one crypto call (per SEAL_BATCH emails), in order;
        None in place of an email whose headers can't be built (e.g. an address the mail
        layer can't carry): the others still go."""
        built: list[tuple[str, bytes, str | None] | None] = []
        for email in emails:
            mail_id = f"mail_{uuid.uuid4().hex}"
            try:
                message = build_message(
                    email, from_address=self._from, date=self._clock.now(), message_id=mail_id
                )
            except ValueError:
                built.append(None)
                continue
            raw = message.as_bytes(policy=policy.default)
            fits = len(raw) <= MAX_MESSAGE_BYTES
            built.append((mail_id, raw, email.user_id) if fits else None)
        ready = [item for item in built if item is not None]
        sealed: dict[str, SealedEmail] = {}
        for start in range(0, len(ready), SEAL_BATCH):
            chunk = ready[start : start + SEAL_BATCH]
            ciphertexts = await self._crypto.encrypt(
                [_item(raw, mail_id, user_id) for mail_id, raw, user_id in chunk]
            )
            for (mail_id, _, user_id), ciphertext in zip(chunk, ciphertexts, strict=True):
                sealed[mail_id] = SealedEmail(id=mail_id, message_ct=ciphertext, user_id=user_id)
        return [None if item is None else sealed[item[0]] for item in built]

    async def enqueue(
        self, tx: AuthTransaction, sealed: SealedEmail, *, user_id: str | None = None
    ) -> None:
        """Adds the email to tx (one INSERT); it is due at once and sent after commit.

        user_id: whose account it is addressed to, when that was not known as it was sealed
        (a notice to the owner of an address found taken): recorded so that deleting that
        account drops it. Default: the account it was sealed for."""
        now = self._clock.now()
        await tx.conn.execute(
            insert(mail_outbox).values(
                id=sealed.id,
                created_at=now,
                next_attempt_at=now,
                attempts=0,
                message_ct=sealed.message_ct,
                user_id=user_id or sealed.user_id,
            )
        )

    def notify(self) -> None:
        """Wakes this process's relay now instead of at its next poll; call after commit."""
        self._wake.set()

    async def wait(self) -> None:
        """Returns once notified, consuming the notice (the relay bounds it by its poll)."""
        await self._wake.wait()
        self._wake.clear()
