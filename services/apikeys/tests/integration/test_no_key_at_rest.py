"""SECURITY.md 31 and 35: no table holds a key in any encoding, on SQLite and Postgres.

Every kind of row is written first (create, rotate, reveal, usage, revoke, a leak report,
notices and revocations pending), then every column of every table is searched for the key,
its random part, and their hex and base64 forms.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text
from sqlalchemy.engine import make_url

from palisade.common.api_key_format import lookup_hash
from palisade_api.apikeys.v1 import apikeys_pb2 as pb

TABLES = ("api_keys", "api_key_events", "outbox_events", "notice_outbox", "revocation_outbox")


def _needles(key: str) -> list[bytes]:
    random_part = key[8:40]
    found = []
    for secret in (key, random_part):
        raw = secret.encode()
        found += [
            raw,
            raw.hex().encode(),
            raw.hex().upper().encode(),
            base64.b64encode(raw).rstrip(b"="),
            base64.urlsafe_b64encode(raw).rstrip(b"="),
        ]
    return found


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


async def test_no_table_holds_a_key(keys) -> None:
    created = [
        await keys.create(mode="test"),
        await keys.create(
            type="publishable", scopes=["chats:write"], allowed_origins=["https://a.io"]
        ),
    ]
    rotated = await keys.stub.RotateApiKey(
        pb.RotateApiKeyRequest(id=created[0].api_key.id), metadata=keys.person()
    )
    created.append(rotated)
    await keys.stub.RevealApiKey(
        pb.RevealApiKeyRequest(id=rotated.api_key.id), metadata=keys.person()
    )
    used = Timestamp()
    used.FromDatetime(keys.clock.now() - timedelta(seconds=1))
    await keys.stub.RecordKeyUsage(
        pb.RecordKeyUsageRequest(
            usages=[pb.KeyUsage(key_id=rotated.api_key.id, last_used_at=used, ip="192.0.2.1")]
        ),
        metadata=keys.gateway(),
    )
    await keys.stub.ReportLeak(
        pb.ReportLeakRequest(key=created[1].key, source="pastebin"), metadata=keys.anonymous()
    )
    await keys.stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(id=rotated.api_key.id), metadata=keys.person("usr_bob")
    )
    counts = await keys.counts()
    assert all(counts[t] > 0 for t in ("api_keys", "api_key_events", "outbox_events"))
    assert counts["notice_outbox"] > 0

    dump = b""
    async with keys.server.engine.connect() as conn:
        for table in TABLES:
            for row in await conn.execute(text(f"SELECT * FROM {table}")):
                dump += b"\n".join(_as_bytes(v) for v in row) + b"\n"
    assert dump
    for item in created:
        # Stored: the SHA-256 (the lookup) and the display prefix/last four, nothing more.
        assert lookup_hash(item.key) in dump
        for needle in _needles(item.key):
            assert needle not in dump, needle

    url = make_url(keys.settings.database_url or "")
    if url.get_backend_name() == "sqlite":
        # The files themselves, write-ahead log included, as a stolen disk would show them.
        path = Path(url.database or "")
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        for item in created:
            for needle in _needles(item.key):
                assert needle not in raw
