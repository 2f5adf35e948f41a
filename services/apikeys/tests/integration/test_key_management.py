"""Create, list, get, rotate, revoke, reveal and history over real gRPC (SQLite and Postgres)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_harness import code_of

from palisade.common.api_key_format import lookup_hash
from palisade_api.apikeys.v1 import apikeys_pb2 as pb


def _ts(moment) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


async def test_create_shows_the_key_once_and_lists_prefix_and_last4(keys) -> None:
    created = await keys.create(name="Backend", scopes=["chats:read", "team:read"])
    key = created.key
    assert key.startswith("sk_live_")
    assert len(key) == 46
    api_key = created.api_key
    assert api_key.id.startswith("key_")
    assert len(api_key.id) == 36
    assert (api_key.prefix, api_key.last4) == (key[:12], key[-4:])
    assert api_key.state == "active"
    assert api_key.created_by == "usr_alice"
    assert list(api_key.scopes) == ["chats:read", "team:read"]
    assert (api_key.rate_limit.requests_per_minute, api_key.rate_limit.burst) == (600, 100)
    assert not api_key.HasField("expires_at")

    listed = await keys.stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=keys.person())
    assert [k.id for k in listed.api_keys] == [api_key.id]
    assert key not in str(listed)
    got = await keys.stub.GetApiKey(pb.GetApiKeyRequest(id=api_key.id), metadata=keys.person())
    assert got == api_key

    events = await keys.stub.ListApiKeyEvents(
        pb.ListApiKeyEventsRequest(id=api_key.id), metadata=keys.person()
    )
    [event] = events.events
    assert (event.type, event.actor, event.ip) == ("created", "user:usr_alice", "203.0.113.7")
    assert event.device == "Firefox 120 on Linux"
    assert len(await keys.security_events("apikey.created")) == 1


async def test_publishable_key_with_origins_and_own_limit(keys) -> None:
    expires = keys.clock.now() + timedelta(days=30)
    created = await keys.create(
        name="Widget",
        type="publishable",
        mode="test",
        scopes=["visitors:write", "chats:write"],
        allowed_origins=["https://shop.example.com", "http://localhost:3000"],
        rate_limit=pb.RateLimit(requests_per_minute=60, burst=10),
        expires_at=_ts(expires),
    )
    assert created.key.startswith("pk_test_")
    assert list(created.api_key.allowed_origins) == [
        "https://shop.example.com",
        "http://localhost:3000",
    ]
    assert created.api_key.rate_limit.requests_per_minute == 60
    assert created.api_key.expires_at.ToDatetime().replace(tzinfo=expires.tzinfo) == expires


async def test_list_pages_newest_first(keys) -> None:
    ids = []
    for i in range(5):
        ids.append((await keys.create(name=f"k{i}")).api_key.id)
        keys.clock.advance(1)
    seen, token = [], ""
    while True:
        page = await keys.stub.ListApiKeys(
            pb.ListApiKeysRequest(page_size=2, page_token=token), metadata=keys.person()
        )
        seen += [k.id for k in page.api_keys]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]
    await keys.refused(
        keys.stub.ListApiKeys(pb.ListApiKeysRequest(page_token="nope!"), metadata=keys.person()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_page_token",
    )


BAD_CREATES = [
    ({"name": ""}, "invalid_name"),
    ({"name": "x" * 101}, "invalid_name"),
    ({"name": "line\nbreak"}, "invalid_name"),
    ({"type": "admin"}, "invalid_type"),
    ({"mode": "prod"}, "invalid_mode"),
    ({"scopes": []}, "invalid_scope"),
    ({"scopes": ["chats:read", "everything"]}, "invalid_scope"),
    (
        {"type": "publishable", "scopes": ["chats:read"], "allowed_origins": ["https://a.io"]},
        "scope_not_allowed",
    ),
    ({"type": "publishable", "scopes": ["chats:write"]}, "origins_required"),
    ({"allowed_origins": ["https://a.io"]}, "invalid_origin"),
    *[
        (
            {"type": "publishable", "scopes": ["chats:write"], "allowed_origins": [origin]},
            "invalid_origin",
        )
        for origin in [
            "https://a.io/",
            "https://a.io/path",
            "https://a.io?q=1",
            "https://user@a.io",
            "ftp://a.io",
            "https://A.io",
            "https://a.io:99999",
            "https://a.io:443",
            "a.io",
            "*",
        ]
    ],
    (
        {
            "type": "publishable",
            "scopes": ["chats:write"],
            "allowed_origins": [f"https://s{i}.example.com" for i in range(21)],
        },
        "invalid_origin",
    ),
    ({"rate_limit": pb.RateLimit(requests_per_minute=0, burst=10)}, "invalid_rate_limit"),
    ({"rate_limit": pb.RateLimit(requests_per_minute=1_000_001, burst=10)}, "invalid_rate_limit"),
    ({"rate_limit": pb.RateLimit(requests_per_minute=10, burst=100_001)}, "invalid_rate_limit"),
    ({"rate_limit": pb.RateLimit(requests_per_minute=-5, burst=-1)}, "invalid_rate_limit"),
]


async def test_each_bad_input_has_its_code_and_creates_nothing(keys) -> None:
    before = await keys.counts()
    for fields, code in BAD_CREATES:
        await keys.refused(keys.create(**fields), grpc.StatusCode.INVALID_ARGUMENT, code)
    now = keys.clock.now()
    for expires in (now - timedelta(seconds=1), now, now + timedelta(days=6 * 366)):
        await keys.refused(
            keys.create(expires_at=_ts(expires)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_expiry",
        )
    assert await keys.counts() == before  # nothing half-created, nothing encrypted and kept


async def test_only_recently_signed_in_owners_and_admins(keys) -> None:
    await keys.refused(
        keys.create(keys.person(role="member")),
        grpc.StatusCode.PERMISSION_DENIED,
        "permission_denied",
    )
    await keys.refused(
        keys.create(keys.person(login_age=601)),
        grpc.StatusCode.PERMISSION_DENIED,
        "recent_auth_required",
    )
    assert (await keys.counts())["api_keys"] == 0
    assert len(await keys.security_events("apikey.recent_auth_required")) == 1
    created = await keys.create(keys.person(role="admin", login_age=599))
    key_id = created.api_key.id
    await keys.refused(
        keys.stub.RevealApiKey(
            pb.RevealApiKeyRequest(id=key_id), metadata=keys.person(login_age=700)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "recent_auth_required",
    )
    await keys.refused(
        keys.stub.RotateApiKey(
            pb.RotateApiKeyRequest(id=key_id), metadata=keys.person(login_age=700)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "recent_auth_required",
    )
    # Revoking needs no fresh login: it must be quick in an emergency.
    await keys.stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(id=key_id), metadata=keys.person(login_age=7200)
    )


async def test_another_workspace_gets_not_found_everywhere(keys) -> None:
    key_id = (await keys.create()).api_key.id
    other = lambda: keys.person("usr_bob", "wsp_b")  # noqa: E731
    calls = [
        keys.stub.GetApiKey(pb.GetApiKeyRequest(id=key_id), metadata=other()),
        keys.stub.RotateApiKey(pb.RotateApiKeyRequest(id=key_id), metadata=other()),
        keys.stub.RevokeApiKey(pb.RevokeApiKeyRequest(id=key_id), metadata=other()),
        keys.stub.RevealApiKey(pb.RevealApiKeyRequest(id=key_id), metadata=other()),
        keys.stub.ListApiKeyEvents(pb.ListApiKeyEventsRequest(id=key_id), metadata=other()),
        keys.stub.GetApiKey(pb.GetApiKeyRequest(id="key_" + "0" * 32), metadata=keys.person()),
    ]
    for call in calls:
        await keys.refused(call, grpc.StatusCode.NOT_FOUND, "not_found")
    listed = await keys.stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=other())
    assert list(listed.api_keys) == []
    got = await keys.stub.GetApiKey(pb.GetApiKeyRequest(id=key_id), metadata=keys.person())
    assert got.state == "active"  # untouched


async def test_rotate_with_overlap_then_old_key_refused(keys) -> None:
    old = await keys.create(rate_limit=pb.RateLimit(requests_per_minute=50, burst=5))
    rotated = await keys.stub.RotateApiKey(
        pb.RotateApiKeyRequest(id=old.api_key.id, overlap_seconds=600), metadata=keys.person()
    )
    assert rotated.key != old.key
    assert rotated.api_key.id != old.api_key.id
    assert rotated.api_key.rate_limit.requests_per_minute == 50
    assert list(rotated.api_key.scopes) == list(old.api_key.scopes)
    previous = await keys.stub.GetApiKey(
        pb.GetApiKeyRequest(id=old.api_key.id), metadata=keys.person()
    )
    assert previous.state == "expiring"
    assert previous.replaced_by == rotated.api_key.id
    assert previous.expires_at.seconds == int(keys.clock.timestamp()) + 600

    verified = await keys.stub.VerifyApiKey(
        pb.VerifyApiKeyRequest(key_hash=lookup_hash(old.key)), metadata=keys.gateway()
    )
    assert verified.valid_until.seconds == int(keys.clock.timestamp()) + 600
    assert not verified.valid_until_is_expiry
    await keys.refused(
        keys.stub.RotateApiKey(pb.RotateApiKeyRequest(id=old.api_key.id), metadata=keys.person()),
        grpc.StatusCode.ABORTED,
        "key_not_active",
    )
    keys.clock.advance(600)
    await keys.refused(
        keys.stub.VerifyApiKey(
            pb.VerifyApiKeyRequest(key_hash=lookup_hash(old.key)), metadata=keys.gateway()
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_api_key",
    )
    await keys.stub.VerifyApiKey(
        pb.VerifyApiKeyRequest(key_hash=lookup_hash(rotated.key)), metadata=keys.gateway()
    )
    previous = await keys.stub.GetApiKey(
        pb.GetApiKeyRequest(id=old.api_key.id), metadata=keys.person()
    )
    assert previous.state == "expired"
    history = await keys.stub.ListApiKeyEvents(
        pb.ListApiKeyEventsRequest(id=old.api_key.id), metadata=keys.person()
    )
    assert [e.type for e in history.events] == ["expired", "rotated", "created"]
    assert history.events[0].actor == "system"
    assert len(await keys.security_events("apikey.rotated")) == 1


async def test_rotate_without_overlap_revokes_at_once(keys) -> None:
    old = await keys.create()
    await keys.stub.RotateApiKey(
        pb.RotateApiKeyRequest(id=old.api_key.id, overlap_seconds=0), metadata=keys.person()
    )
    await keys.refused(
        keys.stub.VerifyApiKey(
            pb.VerifyApiKeyRequest(key_hash=lookup_hash(old.key)), metadata=keys.gateway()
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_api_key",
    )
    got = await keys.stub.GetApiKey(pb.GetApiKeyRequest(id=old.api_key.id), metadata=keys.person())
    assert got.state == "revoked"
    assert len(await keys.security_events("apikey.revoked")) == 1


async def test_bad_overlaps_are_refused(keys) -> None:
    key_id = (await keys.create()).api_key.id
    for overlap in (-1, 604_801, 2**62):
        await keys.refused(
            keys.stub.RotateApiKey(
                pb.RotateApiKeyRequest(id=key_id, overlap_seconds=overlap), metadata=keys.person()
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_overlap",
        )
    assert (await keys.counts())["api_keys"] == 1


async def test_parallel_rotations_have_one_winner(keys) -> None:
    key_id = (await keys.create()).api_key.id
    results = await asyncio.gather(
        *[
            keys.stub.RotateApiKey(pb.RotateApiKeyRequest(id=key_id), metadata=keys.person())
            for _ in range(10)
        ],
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, pb.CreatedApiKey)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 9
    assert {code_of(e) for e in losers} == {"key_not_active"}
    assert (await keys.counts())["api_keys"] == 2  # the losers' new keys rolled back
    old = await keys.stub.GetApiKey(pb.GetApiKeyRequest(id=key_id), metadata=keys.person())
    assert old.replaced_by == winners[0].api_key.id


async def test_parallel_revokes_record_one_event(keys) -> None:
    key_id = (await keys.create()).api_key.id
    await asyncio.gather(
        *[
            keys.stub.RevokeApiKey(pb.RevokeApiKeyRequest(id=key_id), metadata=keys.person())
            for _ in range(20)
        ]
    )
    history = await keys.stub.ListApiKeyEvents(
        pb.ListApiKeyEventsRequest(id=key_id), metadata=keys.person()
    )
    assert [e.type for e in history.events] == ["revoked", "created"]
    assert len(await keys.security_events("apikey.revoked")) == 1
    got = await keys.stub.GetApiKey(pb.GetApiKeyRequest(id=key_id), metadata=keys.person())
    assert got.state == "revoked"


async def test_reveal_only_test_secret_keys(keys) -> None:
    test_key = await keys.create(mode="test")
    revealed = await keys.stub.RevealApiKey(
        pb.RevealApiKeyRequest(id=test_key.api_key.id), metadata=keys.person()
    )
    assert revealed.key == test_key.key
    history = await keys.stub.ListApiKeyEvents(
        pb.ListApiKeyEventsRequest(id=test_key.api_key.id), metadata=keys.person()
    )
    assert [e.type for e in history.events] == ["revealed", "created"]
    live = await keys.create()
    publishable = await keys.create(
        type="publishable", mode="test", scopes=["chats:write"], allowed_origins=["https://a.io"]
    )
    for key_id in (live.api_key.id, publishable.api_key.id):
        await keys.refused(
            keys.stub.RevealApiKey(pb.RevealApiKeyRequest(id=key_id), metadata=keys.person()),
            grpc.StatusCode.PERMISSION_DENIED,
            "not_revealable",
        )


async def test_expiry_on_the_clock(keys) -> None:
    created = await keys.create(expires_at=_ts(keys.clock.now() + timedelta(hours=1)))
    verified = await keys.stub.VerifyApiKey(
        pb.VerifyApiKeyRequest(key_hash=lookup_hash(created.key)), metadata=keys.gateway()
    )
    assert verified.valid_until_is_expiry
    keys.clock.advance(3600)
    await keys.refused(
        keys.stub.VerifyApiKey(
            pb.VerifyApiKeyRequest(key_hash=lookup_hash(created.key)), metadata=keys.gateway()
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "key_expired",
    )
    got = await keys.stub.GetApiKey(
        pb.GetApiKeyRequest(id=created.api_key.id), metadata=keys.person()
    )
    assert got.state == "expired"
    history = await keys.stub.ListApiKeyEvents(
        pb.ListApiKeyEventsRequest(id=created.api_key.id), metadata=keys.person()
    )
    assert [(e.type, e.actor) for e in history.events] == [
        ("expired", "system"),
        ("created", "user:usr_alice"),
    ]
    await keys.refused(
        keys.stub.RotateApiKey(
            pb.RotateApiKeyRequest(id=created.api_key.id), metadata=keys.person()
        ),
        grpc.StatusCode.ABORTED,
        "key_not_active",
    )
