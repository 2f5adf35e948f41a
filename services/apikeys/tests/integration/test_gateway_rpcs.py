"""The gateway's RPCs: VerifyApiKey, RecordKeyUsage, WatchRevocations; service callers only."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from palisade.common.api_key_format import lookup_hash
from palisade.common.caller import CALLER_METADATA_KEY
from palisade_api.apikeys.v1 import apikeys_pb2 as pb


def _ts(moment) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


async def test_verify_answers_what_the_key_stands_for(keys) -> None:
    created = await keys.create(
        type="publishable",
        mode="test",
        scopes=["visitors:write"],
        allowed_origins=["https://shop.example.com"],
    )
    verified = await keys.stub.VerifyApiKey(
        pb.VerifyApiKeyRequest(key_hash=lookup_hash(created.key)), metadata=keys.gateway()
    )
    assert verified.key_id == created.api_key.id
    assert (verified.workspace_id, verified.type, verified.mode) == ("wsp_a", "publishable", "test")
    assert list(verified.scopes) == ["visitors:write"]
    assert list(verified.allowed_origins) == ["https://shop.example.com"]
    assert (verified.rate_limit.requests_per_minute, verified.rate_limit.burst) == (600, 100)
    assert verified.created_by == "usr_alice"
    assert not verified.HasField("valid_until")


async def test_verify_refuses_unknown_and_revoked_keys(keys) -> None:
    created = await keys.create()
    # One character changed (never the same one: 1 key in 62 ends in "0", and then "changing"
    # it to "0" asked for the live key itself, which verified: the flake seen under load).
    other = created.key[:-1] + ("1" if created.key.endswith("0") else "0")
    assert other != created.key
    for key_hash in (b"", b"x" * 31, lookup_hash(other), b"\0" * 32):
        await keys.refused(
            keys.stub.VerifyApiKey(
                pb.VerifyApiKeyRequest(key_hash=key_hash), metadata=keys.gateway()
            ),
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid_api_key",
        )
    await keys.stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(id=created.api_key.id), metadata=keys.person()
    )
    await keys.refused(
        keys.stub.VerifyApiKey(
            pb.VerifyApiKeyRequest(key_hash=lookup_hash(created.key)), metadata=keys.gateway()
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_api_key",
    )


async def test_internal_rpcs_are_for_the_gateway_service_only(keys) -> None:
    created = await keys.create()
    verify = pb.VerifyApiKeyRequest(key_hash=lookup_hash(created.key))
    for metadata in (keys.person(), keys.anonymous()):
        await keys.refused(
            keys.stub.VerifyApiKey(verify, metadata=metadata),
            grpc.StatusCode.PERMISSION_DENIED,
            "permission_denied",
        )
        await keys.refused(
            keys.stub.RecordKeyUsage(pb.RecordKeyUsageRequest(), metadata=metadata),
            grpc.StatusCode.PERMISSION_DENIED,
            "permission_denied",
        )
        stream = keys.stub.WatchRevocations(pb.WatchKeyRevocationsRequest(), metadata=metadata)
        await keys.refused(stream.read(), grpc.StatusCode.PERMISSION_DENIED, "permission_denied")
    # No assertion, or a forged one: UNAUTHENTICATED, whatever identity metadata says.
    for metadata in (
        (),
        ((CALLER_METADATA_KEY, "v2.gateway.k.e30.AAAA"),),
        (("x-user", "usr_alice"),),
    ):
        await keys.refused(
            keys.stub.VerifyApiKey(verify, metadata=metadata),
            grpc.StatusCode.UNAUTHENTICATED,
            "caller_assertion_invalid",
        )
    # Another service holding a key for this audience would still not be the gateway; and
    # people may not manage keys with a service identity.
    await keys.refused(
        keys.stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=keys.gateway()),
        grpc.StatusCode.UNAUTHENTICATED,
        "unauthenticated",
    )


async def test_usage_moves_forward_only(keys) -> None:
    created = await keys.create()
    key_id = created.api_key.id
    now = keys.clock.now()

    async def record(*usages: tuple[str, object, str]) -> None:
        await keys.stub.RecordKeyUsage(
            pb.RecordKeyUsageRequest(
                usages=[pb.KeyUsage(key_id=k, last_used_at=_ts(t), ip=ip) for k, t, ip in usages]
            ),
            metadata=keys.gateway(),
        )

    await record(
        (key_id, now - timedelta(seconds=5), "192.0.2.1"),
        (key_id, now - timedelta(seconds=2), "192.0.2.2"),
        ("key_unknown", now, "192.0.2.3"),
        ("x" * 500, now, "192.0.2.4"),
    )
    got = await keys.stub.GetApiKey(pb.GetApiKeyRequest(id=key_id), metadata=keys.person())
    assert got.last_used_ip == "192.0.2.2"
    assert got.last_used_at.seconds == int((now - timedelta(seconds=2)).timestamp())
    await record((key_id, now - timedelta(seconds=60), "192.0.2.9"))  # a late, older batch
    await record((key_id, now + timedelta(days=1), "192.0.2.9"))  # a clock gone wrong
    got = await keys.stub.GetApiKey(pb.GetApiKeyRequest(id=key_id), metadata=keys.person())
    assert got.last_used_ip == "192.0.2.2"
    await record((key_id, now, "not an ip"))
    got = await keys.stub.GetApiKey(pb.GetApiKeyRequest(id=key_id), metadata=keys.person())
    assert got.last_used_at.seconds == int(now.timestamp())
    assert got.last_used_ip == ""
    too_many = [pb.KeyUsage(key_id=key_id, last_used_at=_ts(now))] * 1001
    await keys.refused(
        keys.stub.RecordKeyUsage(
            pb.RecordKeyUsageRequest(usages=too_many), metadata=keys.gateway()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_usage",
    )


async def _watch(keys):
    stream = keys.stub.WatchRevocations(pb.WatchKeyRevocationsRequest(), metadata=keys.gateway())
    metadata = await asyncio.wait_for(stream.initial_metadata(), timeout=5)
    assert ("x-palisade-subscribed", "1") in tuple(metadata)
    return stream


async def _next_notice(stream) -> pb.KeyRevocation:
    while True:
        event = await asyncio.wait_for(stream.read(), timeout=5)
        if not event.heartbeat:
            return event


async def _revocation_reaches_a_subscriber(keys) -> None:
    created = await keys.create()
    stream = await _watch(keys)
    await keys.stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(id=created.api_key.id), metadata=keys.person()
    )
    notice = await _next_notice(stream)
    assert list(notice.key_hashes) == [lookup_hash(created.key)]
    assert list(notice.key_ids) == [created.api_key.id]
    assert notice.reason == "revoked"
    assert notice.sequence >= 1
    heartbeat = await asyncio.wait_for(stream.read(), timeout=5)
    assert heartbeat.heartbeat
    assert heartbeat.sequence == notice.sequence
    stream.cancel()
    assert (await keys.counts())["revocation_outbox"] == 0


async def test_revocation_reaches_a_subscriber_local_feed(keys_sqlite) -> None:
    await _revocation_reaches_a_subscriber(keys_sqlite)


async def test_revocation_reaches_a_subscriber_redis_feed(
    apikeys_factory, postgres_url, redis_url
) -> None:
    async with apikeys_factory(postgres_url, redis_url=redis_url) as keys:
        await _revocation_reaches_a_subscriber(keys)
