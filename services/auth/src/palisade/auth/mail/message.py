"""What the auth service sends (OutgoingEmail) and its RFC 5322 form (build_message).

Header values are refused, not cleaned, when they hold a line break: a recipient or subject
that smuggles in "\\r\\nBcc: ..." is a bug or an attack upstream, and silently stripping it
would hide that.
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from email import message_from_bytes, policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

# Characters that end a header line somewhere: CR and LF for SMTP, and the Unicode line and
# paragraph separators and C0/C1 controls that str.splitlines() (and so some parsers) obey.
_LINE_BREAK_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


@dataclass(frozen=True)
class OutgoingEmail:
    """One email to one person: plain text always, an HTML alternative optionally.

    user_id: the account it is addressed to, when there is one (auth/subjects.py): the queued
    message is sealed under that user's subject key and dropped if the account is deleted
    first. None for someone with no account (an invitee) or not known when it is sealed."""

    to: str
    subject: str
    text: str
    html: str | None = None
    user_id: str | None = None

    def for_user(self, user_id: str) -> OutgoingEmail:
        """The same email, addressed to that account (see user_id)."""
        return replace(self, user_id=user_id)


def _check_header(name: str, value: str) -> None:
    # Tab is the only control character a header value may legitimately hold (folding).
    if any(ch != "\t" and unicodedata.category(ch) in _LINE_BREAK_CATEGORIES for ch in value):
        raise ValueError(f"the {name} header may not contain line breaks or control characters")


def _set_address(message: EmailMessage, name: str, value: str) -> Address:
    """Sets header `name` to exactly one address (a list, "a@x, b@y", would add recipients),
    its domain in ASCII (IDNA), so that every SMTP server can take it."""
    _check_header(name, value)
    message[name] = value
    header = message[name]
    addresses = header.addresses
    if len(addresses) == 1 and not addresses[0].username.isascii():
        # That needs SMTPUTF8 (RFC 6531), which many relays lack, and the standard library
        # cannot read such a stored message back losslessly: refuse rather than mangle it.
        raise ValueError(f"the {name} address has a non-ASCII local part (unsupported)")
    # A defect means the parser guessed (e.g. "a@x; b@y" read as a@x): refuse, don't guess.
    if (
        header.defects
        or len(addresses) != 1
        or not addresses[0].username
        or not addresses[0].domain
    ):
        raise ValueError(f"the {name} header must hold exactly one address")
    address: Address = addresses[0]
    if not address.domain.isascii():
        try:
            domain = address.domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"the {name} address has an invalid domain") from None
        address = Address(address.display_name, address.username, domain)
        del message[name]
        message[name] = address
    return address


def build_message(
    email: OutgoingEmail, *, from_address: str, date: datetime, message_id: str | None = None
) -> EmailMessage:
    """The message to send: From, To, Subject, Date, Message-ID, text (+ HTML alternative).

    `message_id` becomes the local part of the Message-ID (the outbox row id, so logs that
    name either can be matched); `date` comes from the caller's clock.
    Raises ValueError for a header holding a line break, or an address field that is not
    exactly one address with an ASCII local part (non-ASCII domains are sent as IDNA).
    """
    message = EmailMessage()
    sender = _set_address(message, "From", from_address)
    _set_address(message, "To", email.to)
    _check_header("Subject", email.subject)
    message["Subject"] = email.subject
    message["Date"] = format_datetime(date)
    local_part = message_id or uuid.uuid4().hex
    _check_header("Message-ID", local_part)
    message["Message-ID"] = f"<{local_part}@{sender.domain}>"
    # RFC 3834: tells auto-responders (vacation replies) not to answer a machine.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(email.text)
    if email.html is not None:
        message.add_alternative(email.html, subtype="html")
    return message


def parse_message(raw: bytes) -> EmailMessage:
    """A stored message back as an EmailMessage (the modern API the mailers use)."""
    message = message_from_bytes(raw, policy=policy.default)
    if not isinstance(message, EmailMessage):  # policy.default always builds one
        raise TypeError("not an EmailMessage")
    return message
