"""ReportLeak and the security notices sent to auth from the notice outbox."""

from __future__ import annotations

import grpc

from palisade.common.api_key_format import checksum, lookup_hash
from palisade_api.apikeys.v1 import apikeys_pb2 as pb


async def test_a_reported_leak_revokes_at_once_and_tells_the_owners(keys) -> None:
    created = await keys.create(name="CI key")
    await keys.send_notices()
    keys.auth.notices.clear()
    answer = await keys.stub.ReportLeak(
        pb.ReportLeakRequest(key=created.key, source="https://gist.example.com/x\r\nBcc: evil"),
        metadata=keys.anonymous(),
    )
    assert answer == pb.ReportLeakResponse()
    await keys.refused(
        keys.stub.VerifyApiKey(
            pb.VerifyApiKeyRequest(key_hash=lookup_hash(created.key)), metadata=keys.gateway()
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_api_key",
    )
    history = await keys.stub.ListApiKeyEvents(
        pb.ListApiKeyEventsRequest(id=created.api_key.id), metadata=keys.person()
    )
    leak = history.events[0]
    assert (leak.type, leak.actor, leak.ip) == ("leak_reported", "anonymous", "198.51.100.9")
    assert leak.source == "https://gist.example.com/xBcc: evil"  # no line breaks kept
    assert await keys.send_notices() == 1
    [notice] = keys.auth.notices
    assert notice.kind == "api_key_leak_reported"
    assert (notice.workspace_id, list(notice.roles), notice.user_id) == ("wsp_a", ["owner"], "")
    assert notice.details["key_name"] == "CI key"
    assert notice.details["key_prefix"] == created.key[:12]
    assert notice.details["key_last4"] == created.key[-4:]
    assert created.key not in str(notice)
    assert set(keys.auth.callers) == {"service:apikeys"}

    # Reported again: the same answer, nothing more happens.
    before = await keys.counts()
    await keys.stub.ReportLeak(pb.ReportLeakRequest(key=created.key), metadata=keys.anonymous())
    assert await keys.counts() == before
    assert await keys.send_notices() == 0


async def test_garbage_and_unknown_keys_get_the_same_answer(keys) -> None:
    await keys.create()
    body = "sk_live_" + "A" * 32
    unknown = body + checksum(body)
    before = await keys.counts()
    for key, source in [
        ("", ""),
        ("not a key", "x"),
        (body + "AAAAAA", ""),  # a broken checksum
        (unknown, "somewhere"),
        ("sk_live_" + "x" * 500, ""),
        (unknown, "s" * 201),
    ]:
        answer = await keys.stub.ReportLeak(
            pb.ReportLeakRequest(key=key, source=source), metadata=keys.anonymous()
        )
        assert answer == pb.ReportLeakResponse()
    assert await keys.counts() == before


async def test_an_over_long_source_is_ignored_but_answered(keys) -> None:
    created = await keys.create()
    await keys.stub.ReportLeak(
        pb.ReportLeakRequest(key=created.key, source="s" * 201), metadata=keys.anonymous()
    )
    got = await keys.stub.GetApiKey(
        pb.GetApiKeyRequest(id=created.api_key.id), metadata=keys.person()
    )
    assert got.state == "active"


async def test_creation_notice_survives_an_auth_outage(keys) -> None:
    keys.auth.fail_next = 1
    created = await keys.create(name="Billing")  # auth down: the create still succeeds
    assert await keys.send_notices() == 0
    assert keys.auth.notices == []
    assert await keys.send_notices() == 0  # not due before its backoff
    keys.clock.advance(31)
    assert await keys.send_notices() == 1
    [notice] = keys.auth.notices
    assert notice.kind == "api_key_created"
    assert notice.user_id == "usr_alice"
    assert notice.details["key_last4"] == created.key[-4:]
    assert notice.ip == "203.0.113.7"
    assert "Firefox" in notice.user_agent
    assert notice.idempotency_key.startswith("ntc_")


async def test_revoked_by_someone_else_tells_the_creator(keys) -> None:
    created = await keys.create()
    await keys.stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(id=created.api_key.id), metadata=keys.person("usr_carol")
    )
    await keys.send_notices()
    [notice] = keys.auth.of_kind("api_key_revoked")
    assert notice.user_id == "usr_alice"


async def test_the_relay_sends_on_its_own(apikeys_factory, sqlite_url) -> None:
    async with apikeys_factory(sqlite_url, relay_notices=True) as keys:
        await keys.create()
        await keys.auth.arrived.wait()
        assert [n.kind for n in keys.auth.notices] == ["api_key_created"]
