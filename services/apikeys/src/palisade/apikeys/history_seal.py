"""A person's client in a key's history, sealed under their subject key (crypto-shredding).

A history entry made by a person (actor `user:<id>`) keeps their IP and device only as one
AES-256-GCM envelope made by the crypto service under the subject key `user:<id>`
(api_key_events.client_ct, migration 0006), bound by associated data to the entry (workspace,
key, type, actor, time). Deleting the account shreds that subject, so every copy of the
envelope (this database, its replicas and backups) answers subject_erased from then on; the
erasure also empties the column at once (erasure.py). Entries of anyone else (an anonymous leak
reporter, a service, the system) are no account's data and keep their client in ip/device.

Sealing rides on the Encrypt call a step makes anyway where there is one (create and rotate
seal the key's secret in the same call); revoking and revealing add one. A revocation must
never wait for crypto: while crypto is down (or once the person's subject is shredded, for a
session a gateway still had cached) the entry is written without its client, never in
plaintext and never not at all; the step's security event still carries the client to audit,
which seals it there. A signed-in person's leak report keeps no client in the history: the key
is usually another workspace's, whose managers read the history. Reading a history opens the
page's envelopes in one Decrypt, tolerating erased subjects (their entries show no client);
with crypto down the read fails with 503, as every read of sealed data does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace

from palisade.apikeys.model import KeyEvent
from palisade.common.aad import associated_data
from palisade.common.crypto_client import CryptoClient, EncryptInput, SubjectErased
from palisade.common.errors import Unavailable

log = logging.getLogger("palisade.apikeys.history_seal")

PERSON_PREFIX = "user:"
# (workspace id, key id, the entry with its client in plaintext, not yet written)
Entry = tuple[str, str, KeyEvent]


def client_aad(workspace_id: str, key_id: str, event: KeyEvent) -> bytes:
    """Binds a sealed client to its entry: moved to another entry, it fails to open."""
    return associated_data(
        "apikeys",
        "api_key_event",
        workspace_id,
        key_id,
        event.type,
        event.actor,
        event.occurred_at.isoformat(),
        "client",
    )


def is_persons(event: KeyEvent) -> bool:
    return event.actor.startswith(PERSON_PREFIX)


def needs_seal(event: KeyEvent) -> bool:
    """A person's entry with a client in plaintext: what may never be written as it is."""
    return is_persons(event) and bool(event.ip or event.device)


def without_client(event: KeyEvent) -> KeyEvent:
    return replace(event, ip=None, device=None, client_ct=None)


def seal_inputs(entries: Sequence[Entry]) -> list[EncryptInput]:
    """The Encrypt items of the entries that need sealing, in order, each under its person's
    subject (the actor principal is the subject's name: `user:<id>`)."""
    return [
        (
            json.dumps({"ip": event.ip, "device": event.device}, sort_keys=True).encode(),
            client_aad(workspace_id, key_id, event),
            event.actor,
        )
        for workspace_id, key_id, event in entries
        if needs_seal(event)
    ]


def with_sealed(entries: Sequence[Entry], ciphertexts: Sequence[bytes]) -> list[KeyEvent]:
    """The entries as they are written: those seal_inputs() named get their envelope in place
    of the plaintext client (ciphertexts in seal_inputs' order), the others stay as they are."""
    sealed = iter(ciphertexts)
    written = [
        replace(without_client(event), client_ct=next(sealed)) if needs_seal(event) else event
        for _, _, event in entries
    ]
    if next(sealed, None) is not None:
        raise ValueError("more ciphertexts than entries to seal")
    return written


class HistorySeal:
    """Seals and opens people's clients in key histories. crypto=None (the operator CLI,
    which acts as the system): a person's entry would be written without its client."""

    def __init__(self, *, crypto: CryptoClient | None) -> None:
        self._crypto = crypto

    async def seal(self, entries: Sequence[Entry]) -> list[KeyEvent]:
        """The entries with their people's clients sealed, in one Encrypt (none if no entry
        needs it). Crypto down or the subject erased: those entries keep no client."""
        items = seal_inputs(entries)
        if not items:
            return [event for _, _, event in entries]
        if self._crypto is not None:
            try:
                return with_sealed(entries, await self._crypto.encrypt(items))
            except (Unavailable, SubjectErased) as error:
                log.warning(
                    "history entry written without its client",
                    extra={"reason": type(error).__name__, "entries": len(items)},
                )
        return [without_client(e) if needs_seal(e) else e for _, _, e in entries]

    async def open(
        self, workspace_id: str, key_id: str, events: Sequence[KeyEvent]
    ) -> list[KeyEvent]:
        """The entries with their sealed clients opened (one Decrypt for the page); an erased
        subject's entry shows no client."""
        sealed = [e for e in events if e.client_ct is not None]
        if not sealed:
            return list(events)
        if self._crypto is None:
            raise Unavailable("the crypto service is not configured")
        plaintexts = await self._crypto.decrypt(
            [(bytes(e.client_ct or b""), client_aad(workspace_id, key_id, e)) for e in sealed],
            tolerate_erased=True,
        )
        opened = {id(e): p for e, p in zip(sealed, plaintexts, strict=True)}
        result = []
        for event in events:
            if event.client_ct is None:
                result.append(event)
                continue
            plain = opened[id(event)]
            client = json.loads(plain) if plain is not None else {}
            result.append(
                replace(event, ip=client.get("ip"), device=client.get("device"), client_ct=None)
            )
        return result
