"""A person's client in a key's history is sealed under their subject key: not in plaintext in
api_key_events, shown to the workspace's managers, and unreadable in any copy of the rows
(a backup) once the subject is shredded, while the history still reads. Clients of others
(an anonymous leak reporter) stay as they were; a signed-in reporter's is not kept. Real gRPC
and crypto, both backends."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from palisade.apikeys.history_seal import client_aad
from palisade.apikeys.model import KeyEvent
from palisade.apikeys.store import ApiKeyStore
from palisade.apikeys.tables import api_key_events
from palisade.common.crypto_client import CryptoClient, SubjectErased
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade_api.apikeys.v1 import apikeys_pb2 as pb

ALICE, BOB = f"usr_{uuid.uuid4().hex}", f"usr_{uuid.uuid4().hex}"
WS = f"ws_{uuid.uuid4().hex}"
ALICE_IP, BOB_IP = "127.0.0.77", "127.0.0.88"
AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


def alice(keys):
    return keys.person(ALICE, WS, ip=ALICE_IP, user_agent=AGENT)


async def stored(keys) -> list[tuple]:
    """(key_id, type, actor, ip, device, client_ct, occurred_at) of every entry, in order."""
    e = api_key_events.c
    query = select(e.key_id, e.type, e.actor, e.ip, e.device, e.client_ct, e.occurred_at)
    async with keys.server.engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(query.order_by(e.id))]


async def history(keys, key_id: str) -> list[tuple[str, str, str, str]]:
    events = await keys.stub.ListApiKeyEvents(
        pb.ListApiKeyEventsRequest(id=key_id), metadata=keys.person(BOB, WS)
    )
    return [(e.type, e.actor, e.ip, e.device) for e in events.events]


def crypto_as_apikeys(keys, service: str = "apikeys") -> CryptoClient:
    channel = insecure_channel(keys.settings.crypto_target)
    keys.extra.setdefault("channels", []).append(channel)  # type: ignore[union-attr]
    return CryptoClient(
        channel=channel, identity=ServiceIdentity(name=service, signer=keys.signer(service))
    )


async def test_a_persons_client_is_sealed_at_rest_and_shown_to_managers(keys) -> None:
    # Times with microseconds, as the system clock gives them: the associated data names the
    # entry's time, which must read back exactly as it was sealed, on both backends.
    keys.clock.advance(0.123457)
    key = await keys.create(alice(keys))
    successor = await keys.stub.RotateApiKey(
        pb.RotateApiKeyRequest(id=key.api_key.id, overlap_seconds=0), metadata=alice(keys)
    )
    test_key = await keys.create(alice(keys), mode="test")
    await keys.stub.RevealApiKey(
        pb.RevealApiKeyRequest(id=test_key.api_key.id), metadata=alice(keys)
    )
    await keys.stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(id=test_key.api_key.id), metadata=alice(keys)
    )
    leaked = await keys.create(alice(keys))
    other = await keys.create(alice(keys))
    await keys.stub.ReportLeak(pb.ReportLeakRequest(key=leaked.key), metadata=keys.anonymous())
    await keys.stub.ReportLeak(
        pb.ReportLeakRequest(key=other.key), metadata=keys.person(BOB, WS, ip=BOB_IP)
    )

    rows = await stored(keys)
    persons = [r for r in rows if r[2] == f"user:{ALICE}"]
    assert sorted(r[1] for r in persons) == sorted(
        ["created"] * 5 + ["rotated", "revoked", "revealed", "revoked"]
    )
    for _, _, _, ip, device, client_ct, _ in persons:
        assert (ip, device) == (None, None)
        assert client_ct
        assert ALICE_IP.encode() not in client_ct
    assert all(ALICE_IP not in repr(r) for r in rows)
    anonymous = next(r for r in rows if r[2] == "anonymous")
    assert anonymous[3] == "198.51.100.9"  # no account's data: kept as it was
    signed_in = next(r for r in rows if r[2] == f"user:{BOB}")
    assert (signed_in[1], signed_in[3], signed_in[4], signed_in[5]) == (
        "leak_reported",
        None,
        None,
        None,
    )

    device = "Firefox 120 on Linux"
    assert await history(keys, key.api_key.id) == [
        ("revoked", f"user:{ALICE}", ALICE_IP, device),
        ("rotated", f"user:{ALICE}", ALICE_IP, device),
        ("created", f"user:{ALICE}", ALICE_IP, device),
    ]
    assert await history(keys, successor.api_key.id) == [
        ("created", f"user:{ALICE}", ALICE_IP, device)
    ]
    assert [e[:3] for e in await history(keys, test_key.api_key.id)] == [
        ("revoked", f"user:{ALICE}", ALICE_IP),
        ("revealed", f"user:{ALICE}", ALICE_IP),
        ("created", f"user:{ALICE}", ALICE_IP),
    ]


async def test_a_copy_of_the_rows_is_unreadable_once_the_subject_is_shredded(keys) -> None:
    key = await keys.create(alice(keys))
    await keys.stub.RevokeApiKey(pb.RevokeApiKeyRequest(id=key.api_key.id), metadata=alice(keys))
    backup = [r for r in await stored(keys) if r[5] is not None]  # what a backup would keep
    assert len(backup) == 2
    crypto = crypto_as_apikeys(keys)
    try:
        items = [
            (
                ct,
                client_aad(WS, key_id, KeyEvent(kind, occurred_at, actor)),  # type: ignore[arg-type]
            )
            for key_id, kind, actor, _, _, ct, occurred_at in backup
            if ct is not None
        ]
        assert len(await crypto.decrypt(items)) == 2  # the premise: the copy opens today

        # What account deletion does: auth's call (crypto lets only auth shred a user: subject).
        assert await crypto_as_apikeys(keys, "auth").shred_subject(f"user:{ALICE}")

        with pytest.raises(SubjectErased):
            await crypto.decrypt(items)
    finally:
        for channel in keys.extra.get("channels", []):  # type: ignore[union-attr]
            await channel.close()
    # The service still reads the history (before the erasure has even run): no client.
    assert await history(keys, key.api_key.id) == [
        ("revoked", f"user:{ALICE}", "", ""),
        ("created", f"user:{ALICE}", "", ""),
    ]
    # A session a gateway still had cached: the revocation works, its entry keeps no client.
    other = await keys.create(keys.person(BOB, WS))
    await keys.stub.RevokeApiKey(pb.RevokeApiKeyRequest(id=other.api_key.id), metadata=alice(keys))
    assert (await history(keys, other.api_key.id))[0] == ("revoked", f"user:{ALICE}", "", "")
    rows = await stored(keys)
    assert all(ALICE_IP not in repr(r) for r in rows)


async def test_the_store_refuses_a_persons_client_in_plaintext(keys) -> None:
    key = await keys.create(alice(keys))
    plain = KeyEvent("revealed", keys.clock.now(), f"user:{ALICE}", ALICE_IP, "Firefox")
    before = await stored(keys)
    with pytest.raises(ValueError, match="must be sealed"):
        async with ApiKeyStore(engine=keys.server.engine).transaction() as tx:
            await tx.add_event(key.api_key.id, WS, plain)
    assert await stored(keys) == before
