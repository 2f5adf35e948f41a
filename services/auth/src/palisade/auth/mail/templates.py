"""The emails the auth service sends, and sealing them so known and unknown cost the same.

For a request that must not reveal whether an account exists (magic link, sign-up), an email
is sealed either way (a decoy when there is no one to write to) and only a real one is queued.
"""

from __future__ import annotations

import html
import logging

from palisade.auth.mail import MailQueue, OutgoingEmail, SealedEmail

log = logging.getLogger("palisade.auth.emails")
# Never delivered: sealed where there is no account, so both cases do the same work.
_DECOY_RECIPIENT = "decoy@invalid.example"


def magic_link_email(*, to: str, link: str, minutes: int) -> OutgoingEmail:
    text = (
        "Use this link to sign in to Palisade:\n\n"
        f"{link}\n\n"
        f"It works once, for {minutes} minutes. If you didn't ask for it, ignore this email:"
        " nobody can sign in without the link.\n"
    )
    page = (
        "<p>Use this link to sign in to Palisade:</p>"
        f'<p><a href="{html.escape(link)}">Sign in</a></p>'
        f"<p>It works once, for {minutes} minutes. If you didn't ask for it, ignore this"
        " email.</p>"
    )
    return OutgoingEmail(to=to, subject="Your Palisade sign-in link", text=text, html=page)


def existing_account_email(*, to: str, sign_in_url: str) -> OutgoingEmail:
    text = (
        "Someone tried to create a Palisade account with this email address, which already"
        " has one. Nothing was changed.\n\n"
        f"If it was you, sign in instead: {sign_in_url}\n"
        "If it wasn't, you can ignore this email.\n"
    )
    return OutgoingEmail(to=to, subject="Sign-up attempt with your email address", text=text)


async def seal_or_decoy(
    queue: MailQueue, email: OutgoingEmail, *, deliver: bool
) -> SealedEmail | None:
    """The sealed email when it is to be delivered; None otherwise (a decoy was sealed).

    An address the mail layer can't carry (e.g. a non-ASCII local part) is not delivered
    either: the caller still answers as usual, and the failure is logged without the address.
    """
    try:
        sealed = await queue.seal(
            email if deliver else OutgoingEmail(_DECOY_RECIPIENT, email.subject, email.text)
        )
    except ValueError:
        log.warning("email not sent: the recipient address cannot be delivered to")
        return None
    return sealed if deliver else None
