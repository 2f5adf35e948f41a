"""Mailers: the one interface the outbox relay sends through, and its two implementations.

Messages carry sign-in links and the recipient's address, so nothing here logs them or lets
them into an exception: failures are reported by exception class (and SMTP reply code) only,
and the library's own exception, whose text may quote the recipient, is not chained.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from datetime import UTC
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Literal, Protocol, get_args

import aiosmtplib
from pydantic import SecretStr

from palisade.common.clock import Clock, SystemClock
from palisade.common.errors import Unavailable
from palisade.common.secret_files import InsecureSecretPath, create_exclusive

log = logging.getLogger("palisade.auth.mail")

SmtpSecurity = Literal["starttls", "tls", "none"]


class MailDeliveryFailed(Unavailable):
    """The message was not handed over; `reason` is safe to log (a class name, a reply code)."""

    code = "mail_unavailable"
    default_message = "the email could not be delivered"

    def __init__(self, reason: str) -> None:
        super().__init__(f"{self.default_message} ({reason})")
        self.reason = reason


class Mailer(Protocol):
    """Hands one message over for delivery, or raises MailDeliveryFailed."""

    async def send(self, message: EmailMessage) -> None:
        """Returns once the message is accepted (by the SMTP server, or on disk)."""
        ...


def _reason(error: BaseException) -> str:
    """The exception's class and SMTP reply code: enough to act on, nothing personal."""
    code = getattr(error, "code", None)
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused) and error.recipients:
        code = error.recipients[0].code
    return f"{type(error).__name__} {code}" if isinstance(code, int) else type(error).__name__


class SmtpMailer:
    """Sends through an SMTP server (one connection per message).

    security: "starttls" upgrades the connection and refuses to go on if the server does not
    offer STARTTLS (no silent downgrade to plaintext); "tls" is implicit TLS (port 465);
    "none" is for a relay on localhost or inside the cluster.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str | None = None,
        password: SecretStr | str | None = None,
        security: SmtpSecurity = "starttls",
        timeout: float = 10.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if security not in get_args(SmtpSecurity):
            raise ValueError(f"unknown SMTP security mode {security!r}")
        if (username is None) != (password is None):
            raise ValueError("an SMTP username needs a password, and a password a username")
        if security == "none" and username is not None:
            log.warning("SMTP credentials will be sent without TLS (smtp_security=none)")
        self._host = host
        self._port = port
        self._username = username
        self._password = password
        self._security = security
        self._timeout = timeout
        self._tls_context = tls_context  # None: the system's trust store, certificates checked

    async def send(self, message: EmailMessage) -> None:
        password = (
            self._password.get_secret_value()
            if isinstance(self._password, SecretStr)
            else self._password
        )
        try:
            await aiosmtplib.send(
                message,
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=password,
                timeout=self._timeout,
                use_tls=self._security == "tls",
                # True, not None: None would upgrade only if offered, i.e. allow a downgrade.
                start_tls=self._security == "starttls",
                tls_context=self._tls_context,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise MailDeliveryFailed(_reason(error)) from None
        log.info("mail sent over SMTP", extra={"message_id": message["Message-ID"]})


class DirectoryMailer:
    """Writes each message to <directory>/<UTC time>-<uuid>.eml (the embedded default).

    The files hold sign-in links: the folder is owner-only (0700) and each file 0600. A file
    is written under a temporary dot-name, synced and then linked into place, so a reader
    listing *.eml never sees a half-written message. Names sort by time.
    """

    def __init__(self, directory: Path, *, clock: Clock | None = None) -> None:
        self._directory = directory
        self._clock = clock or SystemClock()

    @property
    def directory(self) -> Path:
        return self._directory

    async def send(self, message: EmailMessage) -> None:
        now = self._clock.now().astimezone(UTC)
        path = self._directory / f"{now:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex}.eml"
        # LF line ends, as Unix mail tools write files (the wire's CRLF is the SMTP client's job).
        content = message.as_bytes(policy=policy.default)
        try:
            # File I/O and fsync block; keep them off the event loop.
            created = await asyncio.to_thread(create_exclusive, path, content)
        except (OSError, InsecureSecretPath) as error:
            raise MailDeliveryFailed(_reason(error)) from None
        if not created:  # a uuid4 collision: never expected, never overwrite
            raise MailDeliveryFailed("FileExistsError")
        log.info(
            "mail written", extra={"message_id": message["Message-ID"], "mail_file": path.name}
        )
