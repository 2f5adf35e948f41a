"""RevokeKeysOfUser, auth's call when a member is removed or an account disabled or deleted: for
service:auth only; revokes exactly the live keys the person created, in one workspace or in all,
no one else's and no other workspace's; each revocation has its `revoked` history entry, its
`apikey.revoked` security event (with the reason) and its revocation-feed notice; idempotent;
more keys than one batch; bad ids and reasons are INVALID_ARGUMENT. Real gRPC on both backends."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text

from palisade.common.api_key_format import lookup_hash
from palisade_api.apikeys.v1 import apikeys_pb2 as pb

ALICE, BOB = f"usr_{uuid.uuid4().hex}", f"usr_{uuid.uuid4().hex}"
WS_ONE, WS_TWO = f"ws_{uuid.uuid4().hex}", f"ws_{uuid.uuid4().hex}"


def auth(keys):
    """Signed as the auth service (the auth:apikeys edge)."""
    return keys.signing.marker("auth")


async def create(keys, user_id: str, workspace_id: str, **fields) -> pb.CreatedApiKey:
    return await keys.create(keys.person(user_id, workspace_id), **fields)


async def revoke_of_user(keys, user_id: str, workspace_id: str, reason: str) -> int:
    request = pb.RevokeKeysOfUserRequest(user_id=user_id, workspace_id=workspace_id, reason=reason)
    return (await keys.stub.RevokeKeysOfUser(request, metadata=auth(keys))).revoked


async def states(keys, workspace_id: str, user_id: str) -> dict[str, str]:
    listed = await keys.stub.ListApiKeys(
        pb.ListApiKeysRequest(page_size=100), metadata=keys.person(user_id, workspace_id)
    )
    return {k.id: k.state for k in listed.api_keys}


async def history(keys, key_id: str, workspace_id: str) -> list[tuple[str, str]]:
    events = await keys.stub.ListApiKeyEvents(
        pb.ListApiKeyEventsRequest(id=key_id), metadata=keys.person(ALICE, workspace_id)
    )
    return [(e.type, e.actor) for e in events.events]


async def revoke_reasons(keys) -> dict[str, str | None]:
    async with keys.server.engine.connect() as conn:
        rows = await conn.execute(text("SELECT id, revoke_reason FROM api_keys"))
        return {str(key_id): reason for key_id, reason in rows}


async def watch(keys):
    stream = keys.stub.WatchRevocations(pb.WatchKeyRevocationsRequest(), metadata=keys.gateway())
    metadata = await asyncio.wait_for(stream.initial_metadata(), timeout=5)
    assert ("x-palisade-subscribed", "1") in tuple(metadata)
    return stream


async def notices_until(stream, key_ids: set[str]) -> list[pb.KeyRevocation]:
    """Feed notices until every one of key_ids has been named."""
    seen: list[pb.KeyRevocation] = []
    named: set[str] = set()
    while not key_ids <= named:
        event = await asyncio.wait_for(stream.read(), timeout=10)
        if not event.heartbeat:
            seen.append(event)
            named.update(event.key_ids)
    return seen


async def test_only_the_auth_service_may_call_it(keys) -> None:
    created = await create(keys, ALICE, WS_ONE)
    request = pb.RevokeKeysOfUserRequest(
        user_id=ALICE, workspace_id=WS_ONE, reason="member_removed"
    )
    for metadata in (
        keys.gateway(),  # the gateway's own identity
        keys.person(ALICE, WS_ONE),  # the person herself, through the gateway
        keys.person(BOB, WS_ONE),
        keys.anonymous(),
    ):
        await keys.refused(
            keys.stub.RevokeKeysOfUser(request, metadata=metadata),
            grpc.StatusCode.PERMISSION_DENIED,
            "permission_denied",
        )
    await keys.refused(
        keys.stub.RevokeKeysOfUser(request),  # no assertion at all
        grpc.StatusCode.UNAUTHENTICATED,
        "caller_assertion_invalid",
    )
    assert (await states(keys, WS_ONE, ALICE))[created.api_key.id] == "active"
    assert await keys.security_events("apikey.revoked") == []


async def test_it_revokes_exactly_the_persons_live_keys_in_that_workspace(keys) -> None:
    alice_one = [(await create(keys, ALICE, WS_ONE)).api_key.id for _ in range(3)]
    publishable = await create(
        keys,
        ALICE,
        WS_ONE,
        type="publishable",
        scopes=["visitors:write"],
        allowed_origins=["https://shop.example.com"],
    )
    alice_one.append(publishable.api_key.id)
    # A key rotated with an overlap: the old one still works until the overlap ends, so it is
    # live too, and so is its successor.
    rotated = await create(keys, ALICE, WS_ONE)
    successor = await keys.stub.RotateApiKey(
        pb.RotateApiKeyRequest(id=rotated.api_key.id, overlap_seconds=3600),
        metadata=keys.person(ALICE, WS_ONE),
    )
    alice_one += [rotated.api_key.id, successor.api_key.id]
    already = await create(keys, ALICE, WS_ONE)
    await keys.stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(id=already.api_key.id), metadata=keys.person(ALICE, WS_ONE)
    )
    alice_two = [(await create(keys, ALICE, WS_TWO)).api_key.id for _ in range(2)]
    bobs = [await create(keys, BOB, WS_ONE) for _ in range(2)]
    bob_one = [created.api_key.id for created in bobs]
    revoked_before = len(await keys.security_events("apikey.revoked"))
    stream = await watch(keys)
    try:
        assert await revoke_of_user(keys, ALICE, WS_ONE, "member_removed") == len(alice_one)
        notices = await notices_until(stream, set(alice_one))
    finally:
        stream.cancel()

    one = await states(keys, WS_ONE, BOB)
    assert {k: one[k] for k in alice_one} == dict.fromkeys(alice_one, "revoked")
    assert {k: one[k] for k in bob_one} == dict.fromkeys(bob_one, "active")
    assert one[already.api_key.id] == "revoked"
    two = await states(keys, WS_TWO, ALICE)
    assert {k: two[k] for k in alice_two} == dict.fromkeys(alice_two, "active")

    reasons = await revoke_reasons(keys)
    assert {k: reasons[k] for k in alice_one} == dict.fromkeys(alice_one, "member_removed")
    assert reasons[already.api_key.id] == "revoked"  # left as it was
    for key_id in alice_one:
        entries = await history(keys, key_id, WS_ONE)
        assert entries[0] == ("revoked", "service:auth")
        assert [kind for kind, _ in entries].count("revoked") == 1
    assert [kind for kind, _ in await history(keys, already.api_key.id, WS_ONE)] == [
        "revoked",
        "created",
    ]

    events = [json.loads(p) for p in await keys.security_events("apikey.revoked")]
    new = events[revoked_before:]
    assert sorted(e["subject"] for e in new) == sorted(f"apikey:{k}" for k in alice_one)
    assert {(e["actor"], e["reason"], e["workspace_id"]) for e in new} == {
        ("service:auth", "member_removed", WS_ONE)
    }

    assert sorted(k for n in notices for k in n.key_ids) == sorted(alice_one)
    assert {n.reason for n in notices} == {"member_removed"}
    by_id = {n.key_ids[0]: n for n in notices}
    assert list(by_id[publishable.api_key.id].key_hashes) == [lookup_hash(publishable.key)]

    # The revoked keys no longer verify (the old one of the overlap included); Bob's do.
    for key in (publishable.key, rotated.key, successor.key):
        await keys.refused(
            keys.stub.VerifyApiKey(
                pb.VerifyApiKeyRequest(key_hash=lookup_hash(key)), metadata=keys.gateway()
            ),
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid_api_key",
        )
    verified = await keys.stub.VerifyApiKey(
        pb.VerifyApiKeyRequest(key_hash=lookup_hash(bobs[0].key)), metadata=keys.gateway()
    )
    assert verified.created_by == BOB

    # Again: nothing left to revoke, nothing recorded.
    counts = await keys.counts()
    assert await revoke_of_user(keys, ALICE, WS_ONE, "member_removed") == 0
    assert await keys.counts() == counts


async def test_an_empty_workspace_means_every_workspace(keys) -> None:
    alice = [(await create(keys, ALICE, ws)).api_key.id for ws in (WS_ONE, WS_TWO, WS_TWO)]
    bob = [(await create(keys, BOB, ws)).api_key.id for ws in (WS_ONE, WS_TWO)]
    assert await revoke_of_user(keys, ALICE, "", "account_deleted") == 3
    reasons = await revoke_reasons(keys)
    assert {k: reasons[k] for k in alice} == dict.fromkeys(alice, "account_deleted")
    assert {k: reasons[k] for k in bob} == dict.fromkeys(bob, None)
    events = [json.loads(p) for p in await keys.security_events("apikey.revoked")]
    workspaces = (WS_ONE, WS_TWO, WS_TWO)
    assert sorted((e["subject"], e["workspace_id"]) for e in events) == sorted(
        (f"apikey:{k}", ws) for k, ws in zip(alice, workspaces, strict=True)
    )
    assert await revoke_of_user(keys, ALICE, "", "account_deleted") == 0
    assert await revoke_of_user(keys, BOB, WS_TWO, "account_disabled") == 1


async def test_a_reclaimed_account_loses_its_keys_everywhere(keys) -> None:
    """auth's first proof of an address (the never-verified account's earlier holder loses
    what it made) asks with the reason account_reclaimed."""
    alice = [(await create(keys, ALICE, ws)).api_key.id for ws in (WS_ONE, WS_TWO)]
    bob = (await create(keys, BOB, WS_ONE)).api_key.id
    assert await revoke_of_user(keys, ALICE, "", "account_reclaimed") == 2
    reasons = await revoke_reasons(keys)
    assert {k: reasons[k] for k in alice} == dict.fromkeys(alice, "account_reclaimed")
    assert reasons[bob] is None


async def test_more_keys_than_one_batch_are_all_revoked(keys) -> None:
    count = 205  # the batch is 200 keys per transaction
    semaphore = asyncio.Semaphore(16)

    async def one() -> str:
        async with semaphore:
            return (await create(keys, ALICE, WS_ONE)).api_key.id

    ids = await asyncio.gather(*(one() for _ in range(count)))
    other = (await create(keys, BOB, WS_ONE)).api_key.id
    stream = await watch(keys)
    try:
        assert await revoke_of_user(keys, ALICE, WS_ONE, "account_disabled") == count
        notices = await notices_until(stream, set(ids))
    finally:
        stream.cancel()
    reasons = await revoke_reasons(keys)
    assert {k: reasons[k] for k in ids} == dict.fromkeys(ids, "account_disabled")
    assert reasons[other] is None
    assert len(await keys.security_events("apikey.revoked")) == count
    assert sorted(k for n in notices for k in n.key_ids) == sorted(ids)
    assert await revoke_of_user(keys, ALICE, WS_ONE, "account_disabled") == 0


async def test_bad_ids_and_reasons_are_invalid_arguments(keys) -> None:
    created = await create(keys, ALICE, WS_ONE)
    bad = [
        (ALICE, WS_ONE, ""),
        (ALICE, WS_ONE, "revoked"),  # a reason of people's own revocations, not auth's
        (ALICE, WS_ONE, "MEMBER_REMOVED"),
        (ALICE, WS_ONE, "member_removed\n"),
        ("", WS_ONE, "member_removed"),
        ("alice", WS_ONE, "member_removed"),
        (ALICE.upper(), WS_ONE, "member_removed"),
        (ALICE + "0", WS_ONE, "member_removed"),
        (f"user:{ALICE}", WS_ONE, "member_removed"),
        (ALICE + "\x00", WS_ONE, "member_removed"),
        (ALICE, "wsp_a", "member_removed"),
        (ALICE, WS_ONE[:-1], "member_removed"),
        (ALICE, WS_ONE + " ", "member_removed"),
        (ALICE, "%", "member_removed"),
    ]
    for user_id, workspace_id, reason in bad:
        request = pb.RevokeKeysOfUserRequest(
            user_id=user_id, workspace_id=workspace_id, reason=reason
        )
        await keys.refused(
            keys.stub.RevokeKeysOfUser(request, metadata=auth(keys)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_argument",
        )
    assert (await states(keys, WS_ONE, ALICE))[created.api_key.id] == "active"
    # A well-formed id with no keys is no error: nothing to revoke.
    assert await revoke_of_user(keys, f"usr_{uuid.uuid4().hex}", WS_ONE, "member_removed") == 0


async def test_keys_that_already_ended_are_left_as_they_ended(keys) -> None:
    expiring_at = Timestamp()
    expiring_at.FromDatetime(keys.clock.now() + timedelta(days=1))
    expiring = await create(keys, ALICE, WS_ONE, expires_at=expiring_at)
    rotated = await create(keys, ALICE, WS_ONE)
    successor = await keys.stub.RotateApiKey(
        pb.RotateApiKeyRequest(id=rotated.api_key.id, overlap_seconds=3600),
        metadata=keys.person(ALICE, WS_ONE),
    )
    keys.clock.advance(timedelta(days=2))  # the expiry and the overlap have both ended
    assert await revoke_of_user(keys, ALICE, WS_ONE, "member_removed") == 1
    reasons = await revoke_reasons(keys)
    assert reasons[successor.api_key.id] == "member_removed"
    assert reasons[expiring.api_key.id] is None
    assert reasons[rotated.api_key.id] in (None, "rotated")
