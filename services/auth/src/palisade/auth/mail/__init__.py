"""Outgoing email: composed, queued in the caller's transaction, relayed with retries.

    queue = MailQueue(crypto=crypto, clock=clock, from_address=settings.mail_from)
    relay = MailRelay(engine=engine, crypto=crypto, mailer=build_mailer(settings), clock=clock,
                      queue=queue, poll_seconds=settings.mail_poll_seconds,
                      max_attempts=settings.mail_max_attempts)
    async with relay.running(): ...   # in the composition root

Importing this package defines the mail_outbox table on palisade.auth.store.metadata.
"""

from palisade.auth.mail.factory import build_mailer
from palisade.auth.mail.message import OutgoingEmail, build_message, parse_message
from palisade.auth.mail.outbox import MailQueue, SealedEmail, mail_outbox, message_aad
from palisade.auth.mail.relay import MailRelay, retry_delay
from palisade.auth.mail.senders import (
    DirectoryMailer,
    MailDeliveryFailed,
    Mailer,
    SmtpMailer,
    SmtpSecurity,
)

__all__ = [
    "DirectoryMailer",
    "MailDeliveryFailed",
    "MailQueue",
    "MailRelay",
    "Mailer",
    "OutgoingEmail",
    "SealedEmail",
    "SmtpMailer",
    "SmtpSecurity",
    "build_mailer",
    "build_message",
    "mail_outbox",
    "message_aad",
    "parse_message",
    "retry_delay",
]
