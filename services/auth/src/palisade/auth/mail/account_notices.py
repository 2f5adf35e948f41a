"""Security notices about a person's own account (SECURITY.md 46): the password changed or was
reset, the email changed, the second factor was disabled, backup codes were regenerated, a
passkey was added or removed.

Each sends one email to the account's address, in the same template family as the notices other
services ask for (notice_catalogue: fixed subject and wording, time, IP, location, device, never
a secret), and is queued in the transaction of the change it reports, so a change that rolls
back tells nobody and a committed one is always told. Composing and sealing need crypto (the
address is stored sealed), so they happen before the transaction, as MailQueue requires:

    pending = await notices.prepare(PASSWORD_CHANGED, user_id=..., email_ct=..., client=...)
    async with store.transaction() as tx:
        ...                                  # the change itself
        await notices.enqueue(tx, pending)
    notices.notify()                         # after commit

These kinds are auth's own: other services cannot send them through SendNotice (its catalogue
is notice_catalogue.CATALOGUE), so no caller can forge "your password was changed".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from palisade.auth.mail import MailQueue, SealedEmail
from palisade.auth.mail.notice_catalogue import NoticeContext, NoticeKind, notice_email
from palisade.auth.sessions.geo import Locator
from palisade.auth.sessions.manager import ClientInfo
from palisade.auth.store import AuthStore, AuthTransaction
from palisade.common.aad import associated_data
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient

log = logging.getLogger("palisade.auth.account_notices")

_CHECK_ACTIVITY = (
    "If this wasn't you, reset your password at once, then review your sessions and your"
    " account's security log."
)

PASSWORD_CHANGED = NoticeKind(
    name="password_changed",
    subject="Your Palisade password was changed",
    headline="The password of your Palisade account was changed.",
    advice=_CHECK_ACTIVITY,
    details=(),
)
PASSWORD_RESET = NoticeKind(
    name="password_reset",
    subject="Your Palisade password was reset",
    headline=(
        "The password of your Palisade account was reset with a link sent to this address."
        " Every session of the account was signed out."
    ),
    advice=_CHECK_ACTIVITY,
    details=(),
)
EMAIL_CHANGED = NoticeKind(
    name="email_changed",
    subject="The email address of your Palisade account was changed",
    headline=(
        "The sign-in address of your Palisade account was changed: this address no longer"
        " signs in to it."
    ),
    advice=(
        "If this wasn't you, contact your workspace's owner or Palisade support at once:"
        " someone with access to your account moved it to another address."
    ),
    details=(("new_email", "New address"),),
)
TOTP_DISABLED = NoticeKind(
    name="totp_disabled",
    subject="Two-step verification was turned off for your Palisade account",
    headline=(
        "Two-step verification (authenticator app codes) was turned off for your Palisade"
        " account, and its backup codes no longer work."
    ),
    advice=_CHECK_ACTIVITY,
    details=(),
)
BACKUP_CODES_REGENERATED = NoticeKind(
    name="backup_codes_regenerated",
    subject="New backup codes were created for your Palisade account",
    headline=(
        "New backup codes were created for your Palisade account; the previous codes no"
        " longer work."
    ),
    advice=_CHECK_ACTIVITY,
    details=(),
)
PASSKEY_ADDED = NoticeKind(
    name="passkey_added",
    subject="A passkey was added to your Palisade account",
    headline="A passkey was added to your Palisade account: it can now sign in with it.",
    advice=(
        "If this wasn't you, remove the passkey in your account's security settings, reset"
        " your password and review your sessions."
    ),
    details=(("passkey_name", "Passkey"),),
)
PASSKEY_REMOVED = NoticeKind(
    name="passkey_removed",
    subject="A passkey was removed from your Palisade account",
    headline="A passkey was removed from your Palisade account: it no longer signs in.",
    advice=_CHECK_ACTIVITY,
    details=(("passkey_name", "Passkey"),),
)

ACCOUNT_NOTICES: dict[str, NoticeKind] = {
    kind.name: kind
    for kind in (
        PASSWORD_CHANGED,
        PASSWORD_RESET,
        EMAIL_CHANGED,
        TOTP_DISABLED,
        BACKUP_CODES_REGENERATED,
        PASSKEY_ADDED,
        PASSKEY_REMOVED,
    )
}


def masked_email(address: str) -> str:
    """An address as a notice shows it to another address: enough for its owner to recognise,
    not the whole of it (a@… keeps the first character of the local part and the domain)."""
    local, _, domain = address.rpartition("@")
    if not local:
        return "…"
    return f"{local[0]}…@{domain}"


def _email_aad(user_id: str) -> bytes:
    return associated_data("auth", "user", user_id, "email")


@dataclass(frozen=True)
class PendingNotice:
    """A sealed notice, ready to be queued with the change it reports."""

    kind: str
    sealed: SealedEmail


class AccountNotices:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        mail: MailQueue,
        locator: Locator,
        clock: Clock,
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._mail = mail
        self._locator = locator
        self._clock = clock

    async def prepare(
        self,
        kind: NoticeKind,
        *,
        user_id: str,
        client: ClientInfo,
        email_ct: bytes | None = None,
        to: str | None = None,
        details: Mapping[str, str] | None = None,
    ) -> PendingNotice | None:
        """Composes and seals the notice for the account's address: `to` when the caller has
        it in plaintext already, else `email_ct` (the user's sealed address, one Decrypt), else
        the address read from the user's row.

        None when the address cannot be carried by the mail layer (logged without it); the
        change still goes ahead. Raises palisade.common.errors.Unavailable when crypto is
        down: the caller fails closed (nothing changes, nothing is written in plaintext).
        """
        if kind.name not in ACCOUNT_NOTICES:
            raise ValueError(f"{kind.name} is not an account notice")
        shown = dict(details or {})
        if not set(shown) <= {key for key, _ in kind.details}:
            raise ValueError(f"{kind.name} does not show {sorted(set(shown))}")
        if to is None:
            if email_ct is None:
                async with self._store.transaction() as tx:
                    user = await tx.user(user_id)
                if user is None:
                    return None
                email_ct = user.email_ct
            [plain] = await self._crypto.decrypt([(email_ct, _email_aad(user_id))])
            to = plain.decode()
        context = NoticeContext(
            occurred_at=self._clock.now(),
            ip=client.ip,
            location=self._locator.locate(client.ip),
            device=client.device or "unknown device",
            workspace_name=None,
        )
        # The account's own mail: sealed under its subject key (auth/subjects.py).
        email = notice_email(kind, shown, context, to=to).for_user(user_id)
        [sealed] = await self._mail.seal_many([email])
        if sealed is None:
            log.warning("%s notice not sent: the address cannot be delivered to", kind.name)
            return None
        return PendingNotice(kind.name, sealed)

    async def enqueue(self, tx: AuthTransaction, pending: PendingNotice | None) -> None:
        """Queues a prepared notice in the change's transaction (nothing for None)."""
        if pending is not None:
            await self._mail.enqueue(tx, pending.sealed)

    def notify(self) -> None:
        """After commit: wake this process's mail relay."""
        self._mail.notify()
