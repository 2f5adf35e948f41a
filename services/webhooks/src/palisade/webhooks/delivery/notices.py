"""The email to a workspace's owners when one of its endpoints was disabled as failing.

Durable without an outbox of its own: the disabled endpoint row IS the pending notice. A sweep
(at start, every sweep interval, and when the worker rings after a disable) finds endpoints
disabled with reason "failing" (recently: within NOTICE_HORIZON) that have no row here for
that disabling (endpoint_id, disabled_at), asks auth's SendNotice to email the workspace's
owners, and then records the row. The idempotency key is the disabling itself
("webhook_disabled:<endpoint>:<disabled_at>"), so a sweep that dies between the call and the
record, or two replicas sweeping at once, still send one email; an endpoint enabled and
disabled again is a new disabling and a new email. A refusal that cannot get better
(INVALID_ARGUMENT, PERMISSION_DENIED, ...) is recorded as given up, never retried in a loop.

Shown in the email: the endpoint's id, its destination's origin (scheme://host[:port], never the
full URL, which may hold the receiver's token) and since when it has been failing.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Column, MetaData, String, Table, and_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.common.clock import Clock
from palisade.common.db import UTCDateTime
from palisade.common.grpc_client import ServiceIdentity
from palisade.common.relay_loop import Wakeup
from palisade.webhooks.model import FAILING, rfc3339
from palisade.webhooks.tables import endpoints
from palisade_api.auth.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger("palisade.webhooks.notices")

NOTICE_KIND = "webhook_disabled"
NOTICE_HORIZON = timedelta(days=7)
SEND_NOTICE = "/" + auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name + "/SendNotice"
_PERMANENT = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED,
}

# Migration 0002 creates it. Its own MetaData: the delivery worker's table, not the API's.
notice_metadata = MetaData()
disabled_notices = Table(
    "disabled_notices",
    notice_metadata,
    Column("endpoint_id", String(36), primary_key=True),
    Column("disabled_at", UTCDateTime(), primary_key=True),
    Column("result", String(64), nullable=False),  # "sent" or "refused:<grpc code>"
    Column("recorded_at", UTCDateTime(), nullable=False),
)


def idempotency_key(endpoint_id: str, disabled_at: datetime) -> str:
    return f"{NOTICE_KIND}:{endpoint_id}:{int(disabled_at.timestamp() * 1000)}"


class DisabledNotices:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        channel: grpc.aio.Channel,
        identity: ServiceIdentity,
        clock: Clock,
        sweep_seconds: float = 60.0,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._engine = engine
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._identity = identity
        self._clock = clock
        self._sweep = sweep_seconds
        self._timeout = timeout_seconds
        self._wakeup = Wakeup()

    def notify(self) -> None:
        self._wakeup.notify()

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("disabled-endpoint notice sweep failed; will retry")
            await self._wakeup.wait(self._sweep)

    async def sweep(self) -> int:
        """Sends the notices still owed; returns how many were settled (sent or refused)."""
        e, n = endpoints, disabled_notices
        now = self._clock.now()
        query = (
            select(e.c.id, e.c.workspace_id, e.c.url_origin, e.c.disabled_at, e.c.failing_since)
            .select_from(
                e.outerjoin(n, and_(n.c.endpoint_id == e.c.id, n.c.disabled_at == e.c.disabled_at))
            )
            .where(
                e.c.enabled.is_(False),
                e.c.disabled_reason == FAILING,
                e.c.disabled_at > now - NOTICE_HORIZON,
                n.c.endpoint_id.is_(None),
            )
            .order_by(e.c.disabled_at)
            .limit(100)
        )
        async with self._engine.connect() as conn:
            owed = (await conn.execute(query)).all()
        settled = 0
        for row in owed:
            result = await self._send(row)
            if result is None:
                continue
            dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
            async with self._engine.begin() as conn:
                await conn.execute(
                    dialect.insert(n)
                    .values(
                        endpoint_id=row.id,
                        disabled_at=row.disabled_at,
                        result=result,
                        recorded_at=self._clock.now(),
                    )
                    .on_conflict_do_nothing()
                )
            settled += 1
        return settled

    async def _send(self, row: Any) -> str | None:
        """ "sent", "refused:<code>" (for good), or None (try again at the next sweep)."""
        endpoint_id: str = row.id
        disabled_at: datetime = row.disabled_at
        failing_since: datetime | None = row.failing_since
        details = {"webhook_id": endpoint_id, "url_origin": str(row.url_origin)[:200]}
        if failing_since is not None:
            details["failing_since"] = rfc3339(failing_since)
        moment = Timestamp()
        moment.FromDatetime(disabled_at)
        request = auth_pb2.SendNoticeRequest(
            kind=NOTICE_KIND,
            workspace_id=row.workspace_id,
            roles=["owner"],
            details=details,
            occurred_at=moment,
            idempotency_key=idempotency_key(endpoint_id, disabled_at),
        )
        try:
            await self._stub.SendNotice(
                request,
                metadata=self._identity.metadata("auth", SEND_NOTICE),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in _PERMANENT:
                log.warning("owners' notice for %s refused: %s", endpoint_id, error.code().name)
                return f"refused:{error.code().name.lower()}"
            log.info("owners' notice for %s not sent yet: %s", endpoint_id, error.code().name)
            return None
        return "sent"
