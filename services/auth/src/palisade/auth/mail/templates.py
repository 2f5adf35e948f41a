"""The emails the auth service sends, and sealing them so known and unknown cost the same.

For a request that must not reveal whether an account exists (magic link, sign-up), an email
is sealed either way (a decoy when there is no one to write to) and only a real one is queued.
"""

from __future__ import annotations

import html
import logging

from palisade.auth.mail import MailQueue, OutgoingEmail, SealedEmail
from palisade.auth.subjects import DECOY_USER_ID
from palisade.common.crypto_client import SubjectErased

log = logging.getLogger("palisade.auth.emails")
# Never delivered: sealed where there is no account, so both cases do the same work.
_DECOY_RECIPIENT = "decoy@invalid.example"


# Every sign-in link says it (the same email for every account, so it tells nothing): a first
# sign-in by link on a never-verified account removes the password (accounts/address_proof.py).
RECLAIM_NOTE = (
    "If your address had not been verified yet, signing in with this link also removes the"
    " account's password, since someone else may have chosen it: to sign in with a password"
    " again, set one with a password reset."
)


def magic_link_email(*, to: str, link: str, minutes: int) -> OutgoingEmail:
    text = (
        "Use this link to sign in to Palisade:\n\n"
        f"{link}\n\n"
        f"It works once, for {minutes} minutes. If you didn't ask for it, ignore this email:"
        " nobody can sign in without the link.\n\n"
        f"{RECLAIM_NOTE}\n"
    )
    page = (
        "<p>Use this link to sign in to Palisade:</p>"
        f'<p><a href="{html.escape(link)}">Sign in</a></p>'
        f"<p>It works once, for {minutes} minutes. If you didn't ask for it, ignore this"
        " email.</p>"
        f"<p>{html.escape(RECLAIM_NOTE)}</p>"
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


def unverified_account_email(*, to: str, sign_in_url: str) -> OutgoingEmail:
    """To the holder of an address whose account has never proven it, when someone signs up
    with it again: the account may not be theirs (pre-hijacking), and this says how to take it
    over."""
    text = (
        "Someone tried to create a Palisade account with this email address, which already"
        " has one. That account has never been verified: if you did not create it, someone"
        " else may have, using your address.\n\n"
        f"To take it over, ask for a password reset for this address at {sign_in_url} and"
        " use the link you receive: it replaces any password they set, and everyone signed"
        " in to the account until then is signed out.\n"
        "If you created the account yourself, sign in and verify your address.\n"
    )
    return OutgoingEmail(to=to, subject="Sign-up attempt with your email address", text=text)


# Confirming verifies the account as it stands, password included: someone who signed up with
# this address before its owner would keep it. So the owner is told not to confirm.
NOT_YOURS_WARNING = (
    "Confirm only if you created this account. If you didn't, don't confirm: someone may"
    ' have signed up with your address. Reset the password instead (use "Forgot password"'
    " with this address): that replaces their password and signs them out."
)


def verification_email(*, to: str, link: str, hours: int) -> OutgoingEmail:
    text = (
        "Confirm that this is your email address for Palisade:\n\n"
        f"{link}\n\n"
        f"The link works once, for {hours} hours; a newer link replaces it.\n\n"
        f"{NOT_YOURS_WARNING}\n"
    )
    page = (
        "<p>Confirm that this is your email address for Palisade:</p>"
        f'<p><a href="{html.escape(link)}">Verify my address</a></p>'
        f"<p>The link works once, for {hours} hours.</p>"
        f"<p><strong>{html.escape(NOT_YOURS_WARNING)}</strong></p>"
    )
    return OutgoingEmail(to=to, subject="Verify your Palisade email address", text=text, html=page)


def email_change_email(*, to: str, link: str, hours: int) -> OutgoingEmail:
    text = (
        "Someone signed in to Palisade asked to use this address to sign in from now on.\n"
        "If it was you, confirm it here:\n\n"
        f"{link}\n\n"
        f"The link works once, for {hours} hours. If it wasn't you, ignore this email:"
        " nothing changes unless the link is used.\n"
    )
    page = (
        "<p>Someone signed in to Palisade asked to use this address to sign in from now on."
        " If it was you, confirm it:</p>"
        f'<p><a href="{html.escape(link)}">Use this address</a></p>'
        f"<p>The link works once, for {hours} hours. If it wasn't you, ignore this email.</p>"
    )
    return OutgoingEmail(
        to=to, subject="Confirm your new Palisade email address", text=text, html=page
    )


def address_in_use_email(*, to: str) -> OutgoingEmail:
    """To the owner of an address someone else asked to move their account to."""
    text = (
        "Someone signed in to another Palisade account asked to change its email address to"
        " this one, which already belongs to your account. Nothing was changed, and your"
        " account is not affected.\n"
    )
    return OutgoingEmail(to=to, subject="Someone tried to use your email address", text=text)


def password_reset_email(*, to: str, link: str, minutes: int) -> OutgoingEmail:
    # Text only: the decoy sealed for an unknown address (seal_or_decoy) then costs the same.
    text = (
        "Someone asked to reset the password of the Palisade account with this email"
        " address. To choose a new password, open this link:\n\n"
        f"{link}\n\n"
        f"It works once, for {minutes} minutes, and only the newest link you were sent works."
        " Resetting signs out every session of the account. If you didn't ask for it, ignore"
        " this email: your password stays as it is.\n"
    )
    return OutgoingEmail(to=to, subject="Reset your Palisade password", text=text)


def invitation_email(*, to: str, link: str, workspace: str, role: str, days: int) -> OutgoingEmail:
    """A team invitation. The workspace's name is a member's text: shown escaped in HTML and
    never put in a header."""
    text = (
        f'You\'re invited to join the workspace "{workspace}" on Palisade as {role}.\n\n'
        f"Accept the invitation here:\n\n{link}\n\n"
        f"The link works once, for {days} days, and only for this email address. If you"
        " weren't expecting it, ignore this email.\n"
    )
    page = (
        f"<p>You're invited to join the workspace <b>{html.escape(workspace)}</b> on Palisade"
        f" as {html.escape(role)}.</p>"
        f'<p><a href="{html.escape(link)}">Accept the invitation</a></p>'
        f"<p>The link works once, for {days} days, and only for this email address. If you"
        " weren't expecting it, ignore this email.</p>"
    )
    return OutgoingEmail(
        to=to, subject="You're invited to a Palisade workspace", text=text, html=page
    )


# How a sign-in's method reads in an email: "password", or a first factor and a second one
# joined by "+" ("magic_link+totp").
_FACTORS = {
    "password": "password",
    "totp": "authenticator code",
    "backup_code": "backup code",
    "passkey": "passkey",
    "magic_link": "emailed sign-in link",
    "invitation": "invitation link",
}


def describe_method(method: str) -> str:
    return " and ".join(_FACTORS.get(part, "another method") for part in method.split("+"))


def new_sign_in_email(
    *,
    to: str,
    link: str,
    when: str,
    ip: str,
    location: str,
    device: str,
    method: str,
    days: int,
) -> OutgoingEmail:
    """A sign-in from a network the account had not signed in from (sessions/new_networks.py).

    Every value shown is the server's own text (a time, an address, a parsed device name), yet
    escaped in HTML all the same; none goes into a header."""
    how = describe_method(method)
    facts = [
        ("When", when),
        ("IP address", ip or "unknown"),
        ("Location", location or "unknown"),
        ("Device", device or "unknown device"),
        ("Signed in with", how),
    ]
    text = (
        "Your Palisade account was just signed in to from a network it had not been used"
        " from before.\n\n"
        + "".join(f"{label}: {value}\n" for label, value in facts)
        + "\nIf this was you, there is nothing to do.\n\n"
        "If this wasn't you, open this link to sign out every session of the account at once,"
        f" then reset your password:\n\n{link}\n\n"
        f"The link works once, for {days} days.\n"
    )
    rows = "".join(
        f'<tr><th align="left">{html.escape(label)}</th><td>{html.escape(value)}</td></tr>'
        for label, value in facts
    )
    page = (
        "<p>Your Palisade account was just signed in to from a network it had not been used"
        f" from before.</p><table>{rows}</table>"
        "<p>If this was you, there is nothing to do.</p>"
        f'<p>If this wasn\'t you: <a href="{html.escape(link)}">sign out everywhere</a>, then'
        " reset your password.</p>"
        f"<p>The link works once, for {days} days.</p>"
    )
    return OutgoingEmail(
        to=to, subject="New sign-in to your Palisade account", text=text, html=page
    )


def new_sign_ins_paused_email(
    *,
    to: str,
    link: str,
    when: str,
    ip: str,
    location: str,
    device: str,
    method: str,
    until: str,
    per_day: int,
    days: int,
) -> OutgoingEmail:
    """The one email past the cap on new-sign-in alerts (sessions/new_networks.py): the facts
    of the sign-in that reached it, and that further alerts are paused until `until`. Like
    new_sign_in_email, every value is the server's own text, escaped in HTML all the same."""
    facts = [
        ("When", when),
        ("IP address", ip or "unknown"),
        ("Location", location or "unknown"),
        ("Device", device or "unknown device"),
        ("Signed in with", describe_method(method)),
    ]
    lead = (
        "Your Palisade account was just signed in to from another network it had not been used"
        f" from before. It has had more such sign-ins than the {per_day} we email about in 24"
        " hours, so we will not email about further new networks until"
        f" {until}. Every sign-in is still recorded in your account's security log."
    )
    text = (
        f"{lead}\n\n"
        + "".join(f"{label}: {value}\n" for label, value in facts)
        + "\nIf these sign-ins were all you (travelling, a phone changing networks), there is"
        " nothing to do.\n\n"
        "If any of them wasn't you, open this link to sign out every session of the account at"
        f" once, then reset your password:\n\n{link}\n\n"
        f"The link works once, for {days} days.\n"
    )
    rows = "".join(
        f'<tr><th align="left">{html.escape(label)}</th><td>{html.escape(value)}</td></tr>'
        for label, value in facts
    )
    page = (
        f"<p>{html.escape(lead)}</p><table>{rows}</table>"
        "<p>If these sign-ins were all you (travelling, a phone changing networks), there is"
        " nothing to do.</p>"
        f'<p>If any of them wasn\'t you: <a href="{html.escape(link)}">sign out everywhere</a>,'
        " then reset your password.</p>"
        f"<p>The link works once, for {days} days.</p>"
    )
    return OutgoingEmail(
        to=to,
        subject="New sign-ins to your Palisade account: alerts paused",
        text=text,
        html=page,
    )


async def seal_or_decoy(
    queue: MailQueue, email: OutgoingEmail, *, deliver: bool
) -> SealedEmail | None:
    """The sealed email when it is to be delivered; None otherwise (a decoy was sealed).

    A delivered email must name its account (email.user_id): it is sealed under that user's
    subject key, and the decoy under a subject of its own (auth/subjects.py), so crypto does
    the same work either way.

    An address the mail layer can't carry (e.g. a non-ASCII local part) is not delivered
    either: the caller still answers as usual, and the failure is logged without the address.
    So is an email for an account deleted a moment ago (its subject is shredded): the caller
    answers as it would have a moment later, for an address with no account.
    """
    if deliver and email.user_id is None:
        raise ValueError("an email to deliver names the account it is addressed to")
    decoy = OutgoingEmail(_DECOY_RECIPIENT, email.subject, email.text, user_id=DECOY_USER_ID)
    try:
        sealed = await queue.seal(email if deliver else decoy)
    except ValueError:
        log.warning("email not sent: the recipient address cannot be delivered to")
        return None
    except SubjectErased:
        log.info("email not sent: its account was deleted")
        return None
    return sealed if deliver else None
