"""Security notices (emails through auth's SendNotice), from an outbox of our own.

A notice is a row written in the same transaction as the change it tells about, and the
NoticeRelay sends it after commit. So a key's creation or a leak report never fails because
auth is down, and no notice is lost: the relay retries with backoff, and auth deduplicates by
the row's id (the idempotency key), so a relay that dies between sending and marking sends
again without a second email. Rows are claimed with a lease (Postgres: FOR UPDATE SKIP
LOCKED), so replicas share the work instead of doubling it. A refusal that cannot get better
(auth says INVALID_ARGUMENT or PERMISSION_DENIED) is given up at once.

Payloads hold ids, names, the key's display prefix and last four characters: never a key.
They also hold the client (IP and User-Agent) of whoever acted, which auth's email shows, and
that person's principal (`actor`, kept here only: account deletion finds their notices by it).
The client is plaintext only while the notice waits: marking a notice sent or given up strips
it (auth has it, or never will), and deleting the actor's account strips it from those still
waiting (palisade.apikeys.erasure). The relay sends what it claimed; a notice the erasure
changed meanwhile is marked from the stripped copy, so stripping is never undone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.apikeys.tables import NOTICE_PENDING, notice_outbox
from palisade.common.clock import Clock
from palisade.common.grpc_client import ServiceIdentity
from palisade.common.outbox_claims import LeasedOutbox, exponential_backoff
from palisade.common.tasks import running_in_background
from palisade_api.auth.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger("palisade.apikeys.notices")

KEY_CREATED = "api_key_created"
KEY_LEAK_REPORTED = "api_key_leak_reported"
KEY_REVOKED = "api_key_revoked"

_FIRST_RETRY_SECONDS = 30
_MAX_RETRY_SECONDS = 3600
_SEND_NOTICE = "/" + auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name + "/SendNotice"
# Due notices, those due longest first.
_OUTBOX = LeasedOutbox(
    notice_outbox,
    columns=(notice_outbox.c.payload,),
    order_by=(notice_outbox.c.next_attempt_at, notice_outbox.c.id),
    pending=NOTICE_PENDING,
)
_PERMANENT = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED,
}


@dataclass(frozen=True)
class Notice:
    kind: str
    occurred_at: datetime
    user_id: str = ""
    workspace_id: str = ""
    roles: tuple[str, ...] = ()
    details: Mapping[str, str] = field(default_factory=dict)
    ip: str = ""
    user_agent: str = ""
    actor: str = ""  # whose client ip/user_agent are ("user:<id>"); never sent to auth

    def to_json(self) -> str:
        doc = asdict(self)
        doc["occurred_at"] = self.occurred_at.isoformat()
        doc["roles"] = list(self.roles)
        doc["details"] = dict(self.details)
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> Notice:
        doc = json.loads(raw)
        doc["occurred_at"] = datetime.fromisoformat(doc["occurred_at"])
        doc["roles"] = tuple(doc["roles"])
        return cls(**doc)  # rows from before `actor` existed: ""

    def without_client(self) -> Notice:
        return replace(self, ip="", user_agent="")


def without_client(payload: str) -> str:
    """A stored payload with its client (IP and User-Agent) removed."""
    return Notice.from_json(payload).without_client().to_json()


class NoticeRefused(Exception):
    """Auth refused the notice for good (retrying would not help)."""


class NoticeSender(Protocol):
    async def send(self, idempotency_key: str, notice: Notice) -> None:
        """Delivers one notice; raises NoticeRefused for good, anything else to retry."""
        ...


def retry_delay(attempts: int) -> timedelta:
    """Wait after the `attempts`-th failed attempt: 30 s, 60 s, 120 s, ... at most 1 h."""
    return exponential_backoff(
        attempts, first_seconds=_FIRST_RETRY_SECONDS, max_seconds=_MAX_RETRY_SECONDS
    )


class AuthNoticeSender:
    """Sends notices to auth's SendNotice as service:apikeys."""

    def __init__(
        self, *, channel: grpc.aio.Channel, identity: ServiceIdentity, timeout: float = 10.0
    ) -> None:
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._identity = identity
        self._timeout = timeout

    async def send(self, idempotency_key: str, notice: Notice) -> None:
        occurred_at = Timestamp()
        occurred_at.FromDatetime(notice.occurred_at)
        request = auth_pb2.SendNoticeRequest(
            kind=notice.kind,
            user_id=notice.user_id,
            workspace_id=notice.workspace_id,
            roles=list(notice.roles),
            details=dict(notice.details),
            ip=notice.ip,
            user_agent=notice.user_agent,
            occurred_at=occurred_at,
            idempotency_key=idempotency_key,
        )
        try:
            await self._stub.SendNotice(
                request,
                metadata=self._identity.metadata("auth", _SEND_NOTICE),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in _PERMANENT:
                raise NoticeRefused(error.code().name) from None
            raise


class NoticeOutbox:
    """Adds notices to the caller's transaction; notify() after commit wakes the relay."""

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        self._wake = asyncio.Event()

    async def enqueue(self, conn: AsyncConnection, notice: Notice) -> str:
        notice_id = f"ntc_{uuid.uuid4().hex}"
        now = self._clock.now()
        await conn.execute(
            insert(notice_outbox).values(
                id=notice_id,
                kind=notice.kind,
                created_at=now,
                next_attempt_at=now,
                attempts=0,
                payload=notice.to_json(),
            )
        )
        return notice_id

    def notify(self) -> None:
        self._wake.set()

    async def wait(self) -> None:
        await self._wake.wait()
        self._wake.clear()


@dataclass(frozen=True)
class _Claim:
    id: str
    attempt: int
    payload: str

    @property
    def stripped(self) -> str:
        return without_client(self.payload)


class NoticeRelay:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        sender: NoticeSender,
        outbox: NoticeOutbox,
        clock: Clock,
        poll_seconds: float,
        max_attempts: int,
        batch_size: int = 20,
        lease_seconds: float = 120.0,
    ) -> None:
        if poll_seconds <= 0 or lease_seconds <= 0 or max_attempts < 1 or batch_size < 1:
            raise ValueError("poll_seconds, lease_seconds, max_attempts, batch_size must be > 0")
        self._engine = engine
        self._sender = sender
        self._outbox = outbox
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._max_attempts = max_attempts
        self._batch_size = batch_size
        self._lease = timedelta(seconds=lease_seconds)

    async def run_once(self) -> int:
        """Claims due notices and tries each once; returns how many were sent."""
        sent = 0
        for claim in await self._claim():
            try:
                await self._sender.send(claim.id, Notice.from_json(claim.payload))
            except Exception as error:  # one notice's failure must not stop the others
                await self._failed(claim, error)
                continue
            await self._mark(claim.id, sent_at=self._clock.now(), payload=claim.stripped)
            sent += 1
        return sent

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("notice relay pass failed; will retry")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_seconds):
                    await self._outbox.wait()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with running_in_background(self.run(), name="palisade-apikeys-notice-relay"):
            yield

    async def _claim(self) -> Sequence[_Claim]:
        now = self._clock.now()
        batch = await _OUTBOX.claim(
            self._engine, now=now, lease_end=now + self._lease, limit=self._batch_size
        )
        return [_Claim(c.id, c.attempt, c.row.payload) for c in batch.claims]

    async def _mark(self, notice_id: str, **values: Any) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(notice_outbox)
                .where(notice_outbox.c.id == notice_id, NOTICE_PENDING)
                .values(**values)
            )

    async def _failed(self, claim: _Claim, error: Exception) -> None:
        now = self._clock.now()
        reason = (str(error) if isinstance(error, NoticeRefused) else type(error).__name__)[:200]
        final = isinstance(error, NoticeRefused) or claim.attempt >= self._max_attempts
        extra = {"notice_id": claim.id, "attempt": claim.attempt, "reason": reason}
        if final:
            await self._mark(claim.id, failed_at=now, last_error=reason, payload=claim.stripped)
            log.warning("security notice given up", extra=extra)
        else:
            await self._mark(
                claim.id, next_attempt_at=now + retry_delay(claim.attempt), last_error=reason
            )
            log.warning("security notice not sent; will retry", extra=extra)
