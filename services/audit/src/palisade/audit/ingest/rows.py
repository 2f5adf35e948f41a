"""A batch's events made ready to append: each field encoded once, for the hash and the row.

The hash's encoding (palisade.audit.chain.hashing) and Postgres's binary COPY encode a text or
bytes value the same way (a 4-byte big-endian length, then the bytes; 0xFFFFFFFF for NULL), and
the events table's columns are in the encoding's order (store.APPENDED). So everything an
event's hash covers apart from its place in its chain (seq, predecessor) and the moment it is
recorded is encoded once, before the chain locks are taken, and serves both; under the locks
an event costs one SHA-256 and two joins. A batch repeats its workspaces, actors, devices and
the like, so each distinct value is encoded once per batch.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from palisade.audit.chain.hashing import (
    bytes_field,
    field,
    linked_hash,
    text_field,
    timestamp_text,
)
from palisade.audit.model import NewEvent
from palisade.audit.pii import SealedPii
from palisade.audit.store import APPENDED, NewRow

# Binary COPY: a row's field count, and the int8, bool and timestamptz fields (timestamptz:
# microseconds since 2000-01-01 UTC).
_COUNT = struct.pack(">h", len(APPENDED))
_INT8 = struct.Struct(">Iq").pack
_BOOL = {False: b"\x00\x00\x00\x01\x00", True: b"\x00\x00\x00\x01\x01"}
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_HASH_LENGTH = struct.pack(">I", 32)
_LENGTH = struct.Struct(">I").pack


def _moment_binary(moment: datetime) -> bytes:
    return _INT8(8, (moment - _PG_EPOCH) // _MICROSECOND)


class Moment(NamedTuple):
    """A moment as the hash encodes it and as the binary COPY does."""

    value: datetime
    text: bytes  # field(timestamp_text(value))
    binary: bytes

    @classmethod
    def of(cls, moment: datetime) -> Moment:
        return cls(moment, field(timestamp_text(moment)), _moment_binary(moment))


class PreparedEvent(NamedTuple):
    """An event's encoded parts that do not depend on its place in its chain."""

    event: NewEvent
    pii: SealedPii
    workspace: bytes  # field(workspace_id)
    identity: bytes  # event_id and type
    occurred: Moment
    parties: bytes  # source, actor, subject, the three PII ciphertexts
    rest: bytes  # device browser, os and kind, outcome, reason, details


class BatchEncoder:
    """Prepares one batch's events (from one source), encoding each distinct value once."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._fields: dict[str, bytes] = {}
        self._parties: dict[tuple[str, str], bytes] = {}
        self._rests: dict[tuple[str, str, str, str, str], bytes] = {}
        self._moments: dict[datetime, Moment] = {}

    def _field(self, text: str) -> bytes:
        encoded = self._fields.get(text)
        if encoded is None:
            encoded = self._fields[text] = field(text)
        return encoded

    def prepare(self, event: NewEvent, pii: SealedPii) -> PreparedEvent:
        who = (event.actor, event.subject)
        parties = self._parties.get(who)
        if parties is None:
            parties = self._parties[who] = (
                self._field(self._source) + self._field(event.actor) + self._field(event.subject)
            )
        device = event.device
        how = (device.browser, device.os, device.kind, event.outcome, event.reason)
        rest = self._rests.get(how)
        if rest is None:
            rest = self._rests[how] = b"".join(map(self._field, how))
        occurred = self._moments.get(event.occurred_at)
        if occurred is None:
            occurred = self._moments[event.occurred_at] = Moment.of(event.occurred_at)
        return PreparedEvent(
            event,
            pii,
            self._field(event.workspace_id),
            text_field(event.event_id) + self._field(event.type),
            occurred,
            b"".join(
                (
                    parties,
                    bytes_field(pii.ip_ct),
                    bytes_field(pii.user_agent_ct),
                    bytes_field(pii.location_ct),
                )
            ),
            rest + text_field(event.details),
        )

    def link(
        self, prepared: PreparedEvent, seq: int, prev_hash: bytes, recorded: Moment
    ) -> tuple[bytes, NewRow]:
        """(the event's hash, its row) at this place in its chain."""
        return _link(prepared, self._source, seq, prev_hash, recorded)


def _link(
    prepared: PreparedEvent, source: str, seq: int, prev_hash: bytes, recorded: Moment
) -> tuple[bytes, NewRow]:
    event, pii = prepared.event, prepared.pii
    digest = linked_hash(
        prepared.workspace,
        seq,
        prev_hash,
        prepared.identity,
        prepared.occurred.text,
        recorded.text,
        prepared.parties,
        pii.erased,
        prepared.rest,
    )
    binary = b"".join(
        (
            _COUNT,
            prepared.workspace,
            _INT8(8, seq),
            _LENGTH(len(prev_hash)),
            prev_hash,
            prepared.identity,
            prepared.occurred.binary,
            recorded.binary,
            prepared.parties,
            _BOOL[pii.erased],
            prepared.rest,
            _HASH_LENGTH,
            digest,
        )
    )
    device = event.device
    values = (
        event.workspace_id,
        seq,
        prev_hash,
        event.event_id,
        event.type,
        event.occurred_at,
        recorded.value,
        source,
        event.actor,
        event.subject,
        pii.ip_ct,
        pii.user_agent_ct,
        pii.location_ct,
        pii.erased,
        device.browser,
        device.os,
        device.kind,
        event.outcome,
        event.reason,
        event.details,
        digest,
    )
    return digest, NewRow(values, binary)
