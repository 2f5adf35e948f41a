"""Rows made by ingest: the hash is event_hash of the sealed event they hold, byte for byte the
encoding as first written (a plain loop over the fields, kept here as the reference), and the
binary COPY row decodes to exactly the row's values."""

from __future__ import annotations

import hashlib
import random
import struct
from datetime import UTC, datetime, timedelta

import pytest

from palisade.audit.chain.hashing import ENCODING_VERSION, encode, event_hash
from palisade.audit.ingest.rows import BatchEncoder, Moment
from palisade.audit.model import NewEvent, SealedEvent
from palisade.audit.pii import SealedPii
from palisade.audit.store import APPENDED
from palisade.audit.tables import events
from palisade.common.devices import Device

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _reference_encoding(event: SealedEvent) -> bytes:
    """The encoding as it was first written (hashes stored since then must keep verifying)."""

    def text(moment: datetime) -> str:
        return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

    parts = (
        event.workspace_id,
        str(event.seq),
        event.prev_hash,
        event.event_id,
        event.type,
        text(event.occurred_at),
        text(event.recorded_at),
        event.source,
        event.actor,
        event.subject,
        event.ip_ct,
        event.user_agent_ct,
        event.location_ct,
        "1" if event.pii_erased else "0",
        event.device_browser,
        event.device_os,
        event.device_kind,
        event.outcome,
        event.reason,
        event.details,
    )
    out = [ENCODING_VERSION]
    for part in parts:
        if part is None:
            out.append(struct.pack(">I", 0xFFFFFFFF))
            continue
        raw = part.encode("utf-8") if isinstance(part, str) else part
        out.append(struct.pack(">I", len(raw)) + raw)
    return b"".join(out)


def _decode_binary_row(row: bytes) -> list[object]:
    """One row of a binary COPY into the events columns, decoded by column type."""
    (count,) = struct.unpack_from(">h", row)
    assert count == len(APPENDED)
    offset, values = 2, []
    for name in APPENDED:
        (length,) = struct.unpack_from(">i", row, offset)
        offset += 4
        if length == -1:
            values.append(None)
            continue
        raw = row[offset : offset + length]
        offset += length
        kind = type(events.c[name].type).__name__
        if name in ("seq",):
            values.append(struct.unpack(">q", raw)[0])
        elif name in ("occurred_at", "recorded_at"):
            values.append(_PG_EPOCH + timedelta(microseconds=struct.unpack(">q", raw)[0]))
        elif name == "pii_erased":
            assert raw in (b"\x00", b"\x01")
            values.append(raw == b"\x01")
        elif kind == "LargeBinary":
            values.append(raw)
        else:
            values.append(raw.decode())
    assert offset == len(row)
    return values


def _text(rng: random.Random, alphabet: str = 'abc\\"\t\u00e9\u4e2d\U0001f600 {}:,') -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))


def new_event(rng: random.Random) -> NewEvent:
    """An event with varied (not necessarily valid) content: the rows must hold anything."""
    pick = rng.choice
    return NewEvent(
        batch_index=0,
        event_id=rng.randbytes(16).hex(),
        type=pick(["session.login_succeeded", "apikey.created", _text(rng)]),
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC)
        + timedelta(microseconds=rng.randrange(10**14)),
        workspace_id=pick(["", "ws_" + "a" * 32, "ws_" + "b" * 32]),
        actor=pick(["system", "user:usr_1", _text(rng)]),
        subject=pick(["", "user:usr_1", _text(rng)]),
        ip="",
        user_agent="",
        device=Device(browser=_text(rng), os=pick(["", "Linux"]), kind=pick(["", "desktop"])),
        outcome=pick(["success", "failure"]),
        reason=pick(["", _text(rng)]),
        details=pick(["{}", '{"a":"\\u00e9\\\\"}', _text(rng)]),
    )


def _random_pii(rng: random.Random) -> SealedPii:
    if rng.random() < 0.1:
        return SealedPii(None, None, None, erased=True)

    def blob() -> bytes | None:
        return None if rng.random() < 0.3 else rng.randbytes(rng.randrange(0, 200))

    return SealedPii(blob(), blob(), blob())


@pytest.mark.parametrize("seed", range(5))
def test_rows_hash_and_copy_what_they_hold(seed: int) -> None:
    rng = random.Random(seed)
    encoder = BatchEncoder("auth")
    recorded = Moment.of(datetime(2026, 3, 4, 5, 6, 7, rng.randrange(1_000_000), tzinfo=UTC))
    prev = bytes(32)
    for seq in range(1, 60):
        event = new_event(rng)
        digest, row = encoder.link(encoder.prepare(event, _random_pii(rng)), seq, prev, recorded)
        sealed = SealedEvent(*row.values[:-1])
        assert row.values[-1] == digest
        assert encode(sealed) == _reference_encoding(sealed)
        assert digest == event_hash(sealed) == hashlib.sha256(_reference_encoding(sealed)).digest()
        assert _decode_binary_row(row.binary) == list(row.values)
        assert (sealed.seq, sealed.prev_hash, sealed.source) == (seq, prev, "auth")
        assert sealed.recorded_at == recorded.value
        prev = digest


def test_the_row_is_in_the_columns_order() -> None:
    # Every column but the two the database fills (id, tx_order), in the encoding's order.
    assert set(APPENDED) == {c.name for c in events.columns} - {"id", "tx_order"}
    assert list(APPENDED[:-1]) == list(SealedEvent.__dataclass_fields__)
