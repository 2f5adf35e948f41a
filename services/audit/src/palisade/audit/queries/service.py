"""People's queries of the log: their own events, and (owners, admins) their workspace's.

Newest first, by occurred_at and then storage order, in pages of at most MAX_PAGE_SIZE; a page's
PII fields are decrypted in one batched call, tolerating erased subjects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_

from palisade.audit.catalogue import is_known
from palisade.audit.errors import InvalidFilter, InvalidRange, UnknownEventTypeFilter
from palisade.audit.ingest.validation import ACTOR, SUBJECT
from palisade.audit.model import StoredEvent
from palisade.audit.pii import PiiVault, RevealedPii
from palisade.audit.store import AuditStore, select_events, stored_event
from palisade.audit.tables import PRINCIPAL_CHARS, events
from palisade.common.page_tokens import PageTokens, scope

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


def page_size(requested: int) -> int:
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


@dataclass(frozen=True)
class EventFilter:
    type: str = ""
    actor: str = ""
    subject: str = ""
    since: datetime | None = None
    until: datetime | None = None

    def check(self) -> None:
        if self.type and not is_known(self.type):
            raise UnknownEventTypeFilter()
        for value, form in ((self.actor, ACTOR), (self.subject, SUBJECT)):
            if value and (len(value) > PRINCIPAL_CHARS or not form.fullmatch(value)):
                raise InvalidFilter()
        if self.since is not None and self.until is not None and self.since > self.until:
            raise InvalidRange()

    def scope_parts(self) -> tuple[str, ...]:
        moments = (m.isoformat() if m is not None else "" for m in (self.since, self.until))
        return (self.type, self.actor, self.subject, *moments)

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.type:
            found.append(events.c.type == self.type)
        if self.actor:
            found.append(events.c.actor == self.actor)
        if self.subject:
            found.append(events.c.subject == self.subject)
        if self.since is not None:
            found.append(events.c.occurred_at >= self.since)
        if self.until is not None:
            found.append(events.c.occurred_at < self.until)
        return found


@dataclass(frozen=True)
class ShownEvent:
    stored: StoredEvent
    pii: RevealedPii


@dataclass(frozen=True)
class EventPage:
    events: list[ShownEvent]
    next_token: str


class EventQueries:
    def __init__(self, *, store: AuditStore, vault: PiiVault, tokens: PageTokens) -> None:
        self._store = store
        self._vault = vault
        self._tokens = tokens

    async def mine(
        self, principal: str, event_filter: EventFilter, *, size: int, token: str
    ) -> EventPage:
        """The events whose actor or subject is principal ("user:<id>"), in every workspace."""
        event_filter.check()
        bound = scope("mine", principal, *event_filter.scope_parts())
        whose = or_(events.c.actor == principal, events.c.subject == principal)
        return await self._page([whose, *event_filter.conditions()], bound, size, token)

    async def workspace(
        self,
        workspace_id: str,
        principal: str,
        event_filter: EventFilter,
        *,
        size: int,
        token: str,
    ) -> EventPage:
        event_filter.check()
        bound = scope("workspace", principal, workspace_id, *event_filter.scope_parts())
        conditions = [events.c.workspace_id == workspace_id, *event_filter.conditions()]
        return await self._page(conditions, bound, size, token)

    async def _page(
        self,
        conditions: Sequence[ColumnElement[bool]],
        bound: bytes,
        requested: int,
        token: str,
    ) -> EventPage:
        size = page_size(requested)
        where = list(conditions)
        if token:
            moment, position = self._tokens.read_int(token, bound)
            where.append(
                or_(
                    events.c.occurred_at < moment,
                    and_(events.c.occurred_at == moment, events.c.id < position),
                )
            )
        query = (
            select_events()
            .where(*where)
            .order_by(events.c.occurred_at.desc(), events.c.id.desc())
            .limit(size + 1)
        )
        async with self._store.transaction() as tx:
            rows = [stored_event(r) for r in await tx.conn.execute(query)]
        more = len(rows) > size
        rows = rows[:size]
        revealed = await self._vault.reveal([r.sealed for r in rows])
        next_token = ""
        if more and rows:
            last = rows[-1]
            next_token = self._tokens.issue(bound, last.sealed.occurred_at, last.position)
        return EventPage(
            [ShownEvent(r, p) for r, p in zip(rows, revealed, strict=True)], next_token
        )
