"""The visitors domain: create, read, look up and erase visitors whose PII only crypto can open.

One crypto round trip per call: a create seals every field and computes its blind indexes in
one Encrypt; a read opens every field of every visitor it answers with in one Decrypt; a
lookup asks for the tokens of every usable index key version in one BlindIndex. While crypto is
unreachable the client raises Unavailable before anything is stored.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, IndexInput, Normalization
from palisade.common.errors import PalisadeError
from palisade.common.page_tokens import PageTokens
from palisade.common.page_tokens import scope as token_scope
from palisade.visitors.access import source_of
from palisade.visitors.chats.service import page_size
from palisade.visitors.erasure import Erasures, visitor_event
from palisade.visitors.errors import LookupRequired, PiiRequired, VisitorNotFound
from palisade.visitors.model import Scope, StoredVisitor, Visitor
from palisade.visitors.normalize import clean_email, clean_name, clean_phone, email_lookup
from palisade.visitors.pii import (
    FIELDS,
    Field,
    IndexedField,
    field_aad,
    index_context,
    subject_of,
)
from palisade.visitors.store import VisitorStore

log = logging.getLogger("palisade.visitors.service")

_ID_PREFIX = "vis_"
_FIND_SCOPE = "palisade.visitors.v1.VisitorsService/FindVisitors"


@dataclass(frozen=True)
class VisitorPage:
    visitors: list[Visitor]
    next_token: str  # "" on the last page


def new_visitor_id() -> str:
    return _ID_PREFIX + secrets.token_hex(16)


def is_visitor_id(text: str) -> bool:
    body = text[len(_ID_PREFIX) :]
    return (
        text.startswith(_ID_PREFIX)
        and len(body) == 32
        and all(c in "0123456789abcdef" for c in body)
    )


class VisitorsService:
    def __init__(
        self, *, store: VisitorStore, crypto: CryptoClient, clock: Clock, page_tokens: PageTokens
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._clock = clock
        self._tokens = page_tokens
        # Data key versions this process has told crypto its rows use (see _report_version).
        self._reported_data_versions: set[int] = set()
        self._erasures = Erasures(store=store, crypto=crypto, clock=clock)

    async def create(self, scope: Scope, *, name: str, email: str, phone: str) -> Visitor:
        values: dict[Field, str] = {}
        index: list[tuple[Field, IndexInput]] = []
        if name:
            values["name"] = clean_name(name)
        if email:
            values["email"], lookup = clean_email(email)
            ctx = index_context(scope.workspace_id, "email")
            index.append(("email", IndexInput(lookup, Normalization.EMAIL, ctx)))
        if phone:
            values["phone"] = clean_phone(phone)
            ctx = index_context(scope.workspace_id, "phone")
            index.append(("phone", IndexInput(values["phone"], Normalization.PHONE, ctx)))
        if not values:
            raise PiiRequired()
        visitor_id = new_visitor_id()
        fields = [f for f in FIELDS if f in values]
        sealed = await self._crypto.encrypt_indexed(
            [(values[f].encode(), field_aad(scope.workspace_id, visitor_id, f)) for f in fields],
            [i for _, i in index],
            subject=subject_of(visitor_id),
        )
        envelopes = dict(zip(fields, sealed.ciphertexts, strict=True))
        tokens = {f: t for (f, _), t in zip(index, sealed.index_tokens, strict=True)}
        row = StoredVisitor(
            id=visitor_id,
            workspace_id=scope.workspace_id,
            test=scope.test,
            created_at=self._clock.now(),
            erased_at=None,
            name_ct=envelopes.get("name"),
            email_ct=envelopes.get("email"),
            phone_ct=envelopes.get("phone"),
            email_index=tokens["email"][1] if "email" in tokens else None,
            phone_index=tokens["phone"][1] if "phone" in tokens else None,
            data_key_version=sealed.key_version,
            index_key_version=min((v for v, _ in tokens.values()), default=None),
            source=source_of(scope),
        )
        event = visitor_event("visitor.created", row, scope.actor, self._clock)  # ids only
        await self._store.insert(row, event)
        if sealed.key_version not in self._reported_data_versions:
            await self._report_data_versions()
        return Visitor(
            id=row.id,
            test=row.test,
            created_at=row.created_at,
            erased=False,
            source=row.source or "",
            name=values.get("name", ""),
            email=values.get("email", ""),
            phone=values.get("phone", ""),
        )

    async def get(self, scope: Scope, visitor_id: str) -> Visitor:
        row = await self._row(scope, visitor_id)
        [visitor] = await self._open([row])
        return visitor

    async def find(
        self, scope: Scope, *, email: str, phone: str, requested_size: int = 0, token: str = ""
    ) -> VisitorPage:
        """The live visitors with that email or phone, newest first, a page at a time: nobody
        (a publishable key creating impostors with the address, say) can push one out of reach.
        The page token is bound to the workspace, the mode and the lookup's index tokens."""
        size = page_size(requested_size)
        if bool(email) == bool(phone):
            raise LookupRequired()
        field: IndexedField
        if email:
            value, normalization, field = email_lookup(email), Normalization.EMAIL, "email"
        else:
            value, normalization, field = clean_phone(phone), Normalization.PHONE, "phone"
        # Every usable index key version: rows not yet moved to the primary still match.
        tokens = await self._crypto.blind_index(
            value, normalization, index_context(scope.workspace_id, field), all_versions=True
        )
        mode = "test" if scope.test else "live"
        bound = token_scope(_FIND_SCOPE, scope.workspace_id, mode, field, *sorted(tokens))
        after = self._tokens.read_str(token, bound) if token else None
        rows = await self._store.find(
            scope.workspace_id, field, tokens, test=scope.test, after=after, limit=size + 1
        )
        page, more = rows[:size], len(rows) > size
        # The token holds the last row read, even if it turned out an interrupted erasure
        # (left out below): the next page starts after it.
        next_token = self._tokens.issue(bound, page[-1].created_at, page[-1].id) if more else ""
        visitors = await self._open(page)
        return VisitorPage([v for v in visitors if not v.erased], next_token)

    async def erase(self, scope: Scope, visitor_id: str) -> None:
        """Shreds the subject key first, then clears the row: a crash in between leaves PII no
        one can open (the key is gone) and a retry (or the next read) finishes the clearing.
        Idempotent: an erased visitor answers as a success, with no second event (and any of
        their messages not yet redacted, from before erasure redacted them, are redacted)."""
        row = await self._row(scope, visitor_id)
        if row.erased_at is not None:
            await self._store.redact_erased_messages(row.id)
            return
        await self._crypto.shred_subject(subject_of(row.id))
        await self._erasures.finish(row, scope.actor)

    async def _report_data_versions(self) -> None:
        """The first row this process stores under a data key version: crypto is told every
        version rows use (ReportDataVersions, what `keys retire --below N` checks) at once,
        not only after the next rewrap walk. One call per version per process; a failure is
        logged, never fails the write (the next row or walk reports again)."""
        try:
            versions = await self._store.data_versions_in_use()
            await self._crypto.report_data_versions(versions)
        except PalisadeError as exc:
            log.warning("data key versions not reported to crypto", extra={"reason": exc.code})
            return
        self._reported_data_versions.update(versions)

    async def _row(self, scope: Scope, visitor_id: str) -> StoredVisitor:
        row = None
        if is_visitor_id(visitor_id):
            row = await self._store.get(scope.workspace_id, visitor_id, test=scope.test)
        if row is None:
            raise VisitorNotFound()
        return row

    async def _open(self, rows: Sequence[StoredVisitor]) -> list[Visitor]:
        """The rows decrypted in one call. A row whose subject was shredded but not yet cleared
        (erasure interrupted after the shred) answers as erased, and its clearing is finished
        (see erasure.py: an erased subject's envelope in a live row fails as tampered)."""
        items: list[tuple[bytes, bytes]] = []
        places: list[tuple[int, Field]] = []
        for n, row in enumerate(rows):
            for f in FIELDS:
                envelope = getattr(row, f"{f}_ct")
                if envelope is not None and row.erased_at is None:
                    items.append((envelope, field_aad(row.workspace_id, row.id, f)))
                    places.append((n, f))
        plaintexts = await self._crypto.decrypt(items, tolerate_erased=True)
        opened: list[dict[str, str]] = [{} for _ in rows]
        shredded: set[int] = set()
        for (n, f), plain in zip(places, plaintexts, strict=True):
            if plain is None:
                shredded.add(n)
            else:
                opened[n][f] = plain.decode()
        out: list[Visitor] = []
        for n, row in enumerate(rows):
            erased = row.erased_at is not None or n in shredded
            if n in shredded and row.erased_at is None:
                await self._erasures.finish_interrupted(row)
            values = {} if erased else opened[n]
            out.append(
                Visitor(
                    id=row.id,
                    test=row.test,
                    created_at=row.created_at,
                    erased=erased,
                    source=row.source or "",
                    name=values.get("name", ""),
                    email=values.get("email", ""),
                    phone=values.get("phone", ""),
                )
            )
        return out
