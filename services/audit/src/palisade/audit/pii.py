"""The PII fields of events (IP, user agent, location): encrypted before they are hashed.

Each field is encrypted by the crypto service under the subject key of the person whose client
the fields describe: the actor when that is a user, else the subject when that is a user or
visitor, else no subject. Shredding that person's key later makes the fields unreadable everywhere
while every stored byte, and so the chain, stays as it was. Associated data binds each
ciphertext to its event and field, so a ciphertext moved to another row fails to open.

Ingest encrypts a batch in one call (several at once when its fields exceed crypto's batch
limit); reads decrypt a page in one call, tolerating erased subjects (fields empty, `erased`).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from palisade.audit.model import NewEvent, SealedEvent
from palisade.common.aad import associated_data
from palisade.common.crypto_client import CryptoClient, EncryptInput, SubjectErased
from palisade.common.geo import UNKNOWN, Location, Locator

AAD_OWNER = "audit"
_PERSON_SUBJECTS = ("user:", "visitor:")


def pii_subject(actor: str, subject: str) -> str:
    """Whose key protects the event's PII fields ("" for none).

    The fields describe the client that acted, so they belong to the actor when the actor is
    a person: an admin removing a member leaves the admin's IP, sealed under the admin's key
    (erased with the admin, not with the member). Otherwise (an anonymous attempt on an
    account, an API key's call about a visitor) they are sealed under the person the event is
    about, so erasing that person erases them."""
    if actor.startswith("user:"):
        return actor
    if subject.startswith(_PERSON_SUBJECTS):
        return subject
    return ""


_OWNER_PREFIX = associated_data(AAD_OWNER)
_FIELD_SUFFIXES = MappingProxyType(
    {f: len(f).to_bytes(4, "big") + f.encode() for f in ("ip", "user_agent", "location")}
)


def field_aad(event_id: str, field: str) -> bytes:
    """associated_data("audit", event_id, field), built from its cached parts: two per event
    of every batch ingested and every page read."""
    raw = event_id.encode()
    return _OWNER_PREFIX + len(raw).to_bytes(4, "big") + raw + _FIELD_SUFFIXES[field]


def _location_bytes(location: Location) -> bytes:
    return json.dumps(
        {"city": location.city, "country": location.country},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


def _location(raw: bytes) -> Location:
    try:
        body = json.loads(raw)
        return Location(country=str(body.get("country", "")), city=str(body.get("city", "")))
    except (ValueError, AttributeError):
        return UNKNOWN


class SealedPii(NamedTuple):
    """An event's PII fields as crypto sealed them (a NamedTuple: one is made per event)."""

    ip_ct: bytes | None
    user_agent_ct: bytes | None
    location_ct: bytes | None
    # The subject was erased before the event arrived: its PII is not kept at all.
    erased: bool = False


@dataclass(frozen=True)
class RevealedPii:
    ip: str = ""
    user_agent: str = ""
    location: Location = UNKNOWN
    erased: bool = False


NO_PII = RevealedPii()
_ERASED = SealedPii(None, None, None, erased=True)


# The fields sealed, in SealedPii's order.
_SEALED = ("ip", "user_agent", "location")


class PiiVault:
    def __init__(self, *, crypto: CryptoClient, locator: Locator, batch_items: int) -> None:
        self._crypto = crypto
        self._locator = locator
        self._batch_items = batch_items

    def _items(self, events: Sequence[NewEvent]) -> tuple[list[EncryptInput], list[int]]:
        """(what to encrypt, for each item its event's index * 3 + its field's in _SEALED)."""
        items: list[EncryptInput] = []
        owners: list[int] = []
        locations: dict[str, bytes] = {}  # a batch repeats its IPs
        suffixes = [_FIELD_SUFFIXES[f] for f in _SEALED]
        for index, event in enumerate(events):
            ip = event.ip
            if ip:
                location = locations.get(ip)
                if location is None:
                    found = self._locator.location(ip)
                    location = locations[ip] = _location_bytes(found) if found.known else b""
            else:
                location = b""
            user_agent = event.user_agent
            if not (ip or user_agent or location):
                continue
            subject = pii_subject(event.actor, event.subject)
            raw_id = event.event_id.encode()
            # field_aad(event_id, field) for each field, sharing the event's part.
            event_aad = _OWNER_PREFIX + len(raw_id).to_bytes(4, "big") + raw_id
            slot = index * 3
            for offset, plaintext in enumerate((ip.encode(), user_agent.encode(), location)):
                if plaintext:
                    items.append((plaintext, event_aad + suffixes[offset], subject))
                    owners.append(slot + offset)
        return items, owners

    async def _encrypt(self, items: Sequence[EncryptInput]) -> list[bytes | None]:
        """Envelopes in order; None for items of a subject already erased."""
        try:
            return list(await self._crypto.encrypt(items))
        except SubjectErased:
            pass
        # Rare: a subject of this chunk was erased (e.g. the account was deleted while its
        # last events waited in an outbox). Find which, one call per subject, and keep no PII
        # for it: the event itself is still recorded.
        by_subject: dict[str, list[int]] = defaultdict(list)
        for position, item in enumerate(items):
            by_subject[item[2] if len(item) == 3 else ""].append(position)
        out: list[bytes | None] = [None] * len(items)

        async def one(positions: list[int]) -> None:
            try:
                sealed = await self._crypto.encrypt([items[p] for p in positions])
            except SubjectErased:
                return
            for position, envelope in zip(positions, sealed, strict=True):
                out[position] = envelope

        await asyncio.gather(*(one(p) for p in by_subject.values()))
        return out

    async def seal(self, events: Sequence[NewEvent]) -> list[SealedPii]:
        """Each event's encrypted PII fields; raises Unavailable if crypto is unreachable."""
        items, owners = self._items(events)
        size = self._batch_items
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        results = await asyncio.gather(*(self._encrypt(c) for c in chunks))
        # Three slots per event (_SEALED's fields); an erased subject's event keeps none.
        slots: list[bytes | None] = [None] * (3 * len(events))
        erased: set[int] = set()
        for start, envelopes in zip(range(0, len(items), size), results, strict=True):
            for owner, envelope in zip(owners[start : start + size], envelopes, strict=True):
                if envelope is None:
                    erased.add(owner // 3)
                else:
                    slots[owner] = envelope
        sealed = [SealedPii(slots[i], slots[i + 1], slots[i + 2]) for i in range(0, len(slots), 3)]
        for index in erased:
            sealed[index] = _ERASED
        return sealed

    async def reveal(self, events: Sequence[SealedEvent]) -> list[RevealedPii]:
        """Each event's PII in plaintext (empty and erased for an erased subject), decrypted in
        one call per batch limit; raises Unavailable if crypto is unreachable."""
        wanted: list[tuple[int, str, bytes, bytes]] = []
        for index, event in enumerate(events):
            for field, envelope in (
                ("ip", event.ip_ct),
                ("user_agent", event.user_agent_ct),
                ("location", event.location_ct),
            ):
                if envelope is not None:
                    wanted.append((index, field, envelope, field_aad(event.event_id, field)))
        size = self._batch_items
        chunks = [wanted[i : i + size] for i in range(0, len(wanted), size)]
        results = await asyncio.gather(
            *(
                self._crypto.decrypt([(w[2], w[3]) for w in chunk], tolerate_erased=True)
                for chunk in chunks
            )
        )
        plain: list[dict[str, bytes]] = [{} for _ in events]
        erased = [e.pii_erased for e in events]
        for chunk, plaintexts in zip(chunks, results, strict=True):
            for (index, field, _, _), plaintext in zip(chunk, plaintexts, strict=True):
                if plaintext is None:
                    erased[index] = True
                else:
                    plain[index][field] = plaintext
        revealed: list[RevealedPii] = []
        for index, fields in enumerate(plain):
            if erased[index]:
                revealed.append(RevealedPii(erased=True))
                continue
            location = fields.get("location")
            revealed.append(
                RevealedPii(
                    ip=fields.get("ip", b"").decode(),
                    user_agent=fields.get("user_agent", b"").decode(),
                    location=_location(location) if location else UNKNOWN,
                )
            )
        return revealed
