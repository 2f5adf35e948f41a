"""Security notices for other services (SendNotice): who receives one, once per request.

    notices = SecurityNotices(store=store, crypto=crypto, mail=mail_queue, locator=locator,
                              clock=clock)
    recipients = await notices.send(caller="service:apikeys", request=NoticeRequest(...))

A calling service names a user, or a workspace and roles (default: its owners); auth looks the
addresses up (sealed: one Decrypt call), writes the email (notice_catalogue), seals every copy
in one Encrypt call and queues them in the same transaction as the request's idempotency
record, so a retried call (same caller, same idempotency key) sends nothing more, even when the
two race: the second insert of the key fails, and its emails roll back with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Index,
    Integer,
    LargeBinary,
    Select,
    String,
    Table,
    insert,
    null,
    select,
)
from sqlalchemy.exc import IntegrityError

from palisade.auth.bounded import client_ip
from palisade.auth.mail import MailQueue, OutgoingEmail
from palisade.auth.mail.notice_catalogue import (
    NoticeContext,
    NoticeKind,
    check_details,
    notice_email,
    notice_kind,
)
from palisade.auth.sessions.devices import describe_device
from palisade.auth.sessions.geo import Locator
from palisade.auth.store import TS, AuthStore, AuthTransaction, memberships, metadata, users
from palisade.auth.store import workspaces as workspaces_table
from palisade.common.aad import associated_data
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient
from palisade.common.errors import InvalidArgument
from palisade.common.outbox import SecurityEvent

log = logging.getLogger("palisade.auth.notices")

ROLES = ("owner", "admin", "member")
DEFAULT_ROLES = ("owner",)
# Copies of one notice at most (a workspace's owners are a handful; "member" may be many).
MAX_RECIPIENTS = 1000
_DECRYPT_BATCH = 500  # crypto takes 1000 items per call by default
_MAX_ID_CHARS = 40  # users.id, workspaces.id
_MAX_KEY_CHARS = 128
_MAX_CALLER_CHARS = 64

notice_requests = Table(
    "notice_requests",
    metadata,
    # The calling service's principal: keys are per caller, so services can't collide.
    Column("caller", String(_MAX_CALLER_CHARS), primary_key=True),
    Column("idempotency_key", String(_MAX_KEY_CHARS), primary_key=True),
    # SHA-256 of the request: the same key with another request is refused, not ignored.
    Column("fingerprint", LargeBinary(32), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("recipients", Integer, nullable=False),
    Column("created_at", TS, nullable=False),
)
Index("ix_notice_requests_created_at", notice_requests.c.created_at)


class InvalidNoticeRecipients(InvalidArgument):
    code = "invalid_notice_recipients"
    default_message = "name a user_id or a workspace_id; roles are owner, admin or member"


class InvalidIdempotencyKey(InvalidArgument):
    code = "invalid_idempotency_key"
    default_message = "idempotency_key is required: 1 to 128 printable ASCII characters"


class IdempotencyKeyReused(InvalidArgument):
    code = "idempotency_key_reused"
    default_message = "this idempotency_key was used for a different notice"


@dataclass(frozen=True)
class NoticeRequest:
    kind: str
    idempotency_key: str
    user_id: str = ""
    workspace_id: str = ""
    roles: Sequence[str] = ()
    details: Mapping[str, str] = field(default_factory=dict)
    ip: str = ""
    user_agent: str = ""
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class _Checked:
    kind: NoticeKind
    details: dict[str, str]
    roles: tuple[str, ...]
    fingerprint: bytes


def _check(request: NoticeRequest) -> _Checked:
    kind = notice_kind(request.kind)
    details = check_details(kind, request.details)
    key = request.idempotency_key
    if not 1 <= len(key) <= _MAX_KEY_CHARS or not (key.isascii() and key.isprintable()):
        raise InvalidIdempotencyKey()
    roles = tuple(sorted(set(request.roles))) or DEFAULT_ROLES
    if (
        not (request.user_id or request.workspace_id)
        or len(request.user_id) > _MAX_ID_CHARS
        or len(request.workspace_id) > _MAX_ID_CHARS
        or not set(roles) <= set(ROLES)
    ):
        raise InvalidNoticeRecipients()
    canonical = {
        "kind": kind.name,
        "user_id": request.user_id,
        "workspace_id": request.workspace_id,
        "roles": roles,
        "details": details,
        "ip": request.ip,
        "user_agent": request.user_agent,
        "occurred_at": request.occurred_at.isoformat() if request.occurred_at else None,
    }
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).digest()
    return _Checked(kind, details, roles, digest)


def _email_aad(user_id: str) -> bytes:
    return associated_data("auth", "user", user_id, "email")


def _recipients_query(request: NoticeRequest, roles: tuple[str, ...]) -> Select[Any]:
    """(user id, sealed email, workspace name or None) of each live recipient."""
    live = users.c.disabled_at.is_(None)
    if not request.workspace_id:
        return select(users.c.id, users.c.email_ct, null().label("name")).where(
            users.c.id == request.user_id, live
        )
    query = (
        select(users.c.id, users.c.email_ct, workspaces_table.c.name)
        .join_from(memberships, users, users.c.id == memberships.c.user_id)
        .join(workspaces_table, workspaces_table.c.id == memberships.c.workspace_id)
        .where(memberships.c.workspace_id == request.workspace_id, live)
    )
    if request.user_id:  # that user, if a member (any role)
        return query.where(memberships.c.user_id == request.user_id)
    return (
        query.where(memberships.c.role.in_(roles))
        .order_by(memberships.c.created_at, memberships.c.user_id)
        .limit(MAX_RECIPIENTS)
    )


class SecurityNotices:
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

    async def send(self, *, caller: str, request: NoticeRequest) -> int:
        """Queues the notice for its recipients; returns how many (the first answer again for
        a retry). Raises InvalidArgument subclasses for a bad request."""
        checked = _check(request)
        if len(caller) > _MAX_CALLER_CHARS:
            raise InvalidNoticeRecipients()
        async with self._store.transaction() as tx:
            previous = await self._previous(tx, caller, request.idempotency_key, checked)
            if previous is not None:
                return previous  # a retry: nothing more is sent
            rows = (await tx.conn.execute(_recipients_query(request, checked.roles))).all()
        emails = await self._compose(request, checked, rows)
        sealed = [s for s in await self._mail.seal_many(emails) if s is not None]
        if len(sealed) < len(emails):
            log.warning(
                "security notice not sent to %d recipients: address cannot be delivered to",
                len(emails) - len(sealed),
            )
        try:
            async with self._store.transaction() as tx:
                now = self._clock.now()
                await tx.conn.execute(
                    insert(notice_requests).values(
                        caller=caller,
                        idempotency_key=request.idempotency_key,
                        fingerprint=checked.fingerprint,
                        kind=checked.kind.name,
                        recipients=len(sealed),
                        created_at=now,
                    )
                )
                for email in sealed:
                    await self._mail.enqueue(tx, email)
                await tx.emit(
                    SecurityEvent(
                        type="notice.sent",
                        occurred_at=now,
                        actor=caller,
                        subject=request.user_id or None,
                        workspace_id=request.workspace_id or None,
                        details={"kind": checked.kind.name, "recipients": len(sealed)},
                    )
                )
        except IntegrityError:
            # A parallel call with the same key committed first: its emails are the ones sent.
            async with self._store.transaction() as tx:
                previous = await self._previous(tx, caller, request.idempotency_key, checked)
            if previous is None:
                raise
            return previous
        if sealed:
            self._mail.notify()
        return len(sealed)

    async def _previous(
        self, tx: AuthTransaction, caller: str, key: str, checked: _Checked
    ) -> int | None:
        row = (
            await tx.conn.execute(
                select(notice_requests.c.fingerprint, notice_requests.c.recipients).where(
                    notice_requests.c.caller == caller, notice_requests.c.idempotency_key == key
                )
            )
        ).first()
        if row is None:
            return None
        if bytes(row.fingerprint) != checked.fingerprint:
            raise IdempotencyKeyReused()
        return int(row.recipients)

    async def _compose(
        self, request: NoticeRequest, checked: _Checked, rows: Sequence[object]
    ) -> list[OutgoingEmail]:
        if not rows:
            return []
        recipients = [(r[0], bytes(r[1]), r[2]) for r in rows]  # type: ignore[index]
        addresses: list[bytes] = []
        for start in range(0, len(recipients), _DECRYPT_BATCH):
            chunk = recipients[start : start + _DECRYPT_BATCH]
            addresses += await self._crypto.decrypt(
                [(email_ct, _email_aad(user_id)) for user_id, email_ct, _ in chunk]
            )
        ip = client_ip(request.ip or None)
        context = NoticeContext(
            occurred_at=request.occurred_at or self._clock.now(),
            ip=ip,
            location=self._locator.locate(ip),
            device=describe_device(request.user_agent or None),
            workspace_name=recipients[0][2],
        )
        # Each recipient's own mail: sealed under their subject key (auth/subjects.py).
        return [
            notice_email(checked.kind, checked.details, context, to=address.decode()).for_user(
                user_id
            )
            for (user_id, _, _), address in zip(recipients, addresses, strict=True)
        ]
