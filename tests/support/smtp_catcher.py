"""A real SMTP server (aiosmtpd) for tests, served on the test's own event loop.

Mail is real all the way: a relay delivers over SMTP to the catcher, which keeps each message
(as a recipient's mail client would read it) and its envelope recipients. Serving on the
test's loop lets the catcher's Event wake the test directly: no sleeping, no thread.

    async with serve_smtp_catcher() as (catcher, port):
        ...                                   # point the mailer at 127.0.0.1:port
        message = await catcher.wait_for("ada@example.com")
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP


class SmtpCatcher:
    """An aiosmtpd handler that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        # The envelope's RCPT TO addresses, one list per message (same order as messages).
        self.recipients: list[list[str]] = []
        self.arrived = asyncio.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd hook
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.recipients.append(list(envelope.rcpt_tos))
        self.arrived.set()
        return "250 Message accepted for delivery"

    async def wait_for(
        self, recipient: str, *, within: float = 10.0, subject: str | None = None
    ) -> EmailMessage:
        """The first message to `recipient` (with that subject, if given), waiting for the
        relay to deliver it."""
        async with asyncio.timeout(within):
            while True:
                for message in self.to(recipient, subject=subject):
                    return message
                self.arrived.clear()
                await self.arrived.wait()

    async def until(self, count: int, *, within: float = 10.0) -> list[EmailMessage]:
        """Every message, once at least `count` have arrived."""
        async with asyncio.timeout(within):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return list(self.messages)

    def to(self, recipient: str, *, subject: str | None = None) -> list[EmailMessage]:
        return [
            m
            for m in self.messages
            if m["To"] == recipient and (subject is None or m["Subject"] == subject)
        ]


@asynccontextmanager
async def serve_smtp_catcher(
    catcher: SmtpCatcher | None = None,
) -> AsyncIterator[tuple[SmtpCatcher, int]]:
    """(catcher, port): a catcher served on 127.0.0.1, on a port the kernel chose, on the
    running event loop; closed (with every open connection) on exit."""
    catcher = catcher or SmtpCatcher()
    sessions: list[SMTP] = []

    def session() -> SMTP:
        sessions.append(SMTP(catcher))
        return sessions[-1]

    server = await asyncio.get_running_loop().create_server(session, "127.0.0.1", 0)
    try:
        yield catcher, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        # A relay stopped mid-send leaves its connection open, and wait_closed() waits for
        # every connection: close them rather than wait for aiosmtpd's idle timeout.
        for smtp_session in sessions:
            if smtp_session.transport is not None:
                smtp_session.transport.close()
        await server.wait_closed()
