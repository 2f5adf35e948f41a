"""Logout, session listing and revocation, password change, and the revocation feed."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest

from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("palisade-error-code")


async def _refused_code(call) -> str | None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return _code(caught.value)


async def _next_revocation(stream) -> pb.Revocation:
    """The next notice, past the feed's heartbeats."""
    while True:
        message = await asyncio.wait_for(stream.read(), timeout=10)
        if not message.heartbeat:
            return message


@pytest.mark.parametrize("use_redis", [True, False], ids=["redis", "embedded"])
async def test_logout_revokes_server_side_and_reaches_a_subscriber(auth_factory, use_redis):
    async with auth_factory(use_redis=use_redis) as auth:
        await auth.sign_up("logout@example.com")
        tokens = await auth.login("logout@example.com")
        grant = await auth.validate(tokens.access_token)
        stream = auth.stub.WatchRevocations(
            pb.WatchRevocationsRequest(), metadata=auth.gateway_service()
        )
        assert ("x-palisade-subscribed", "1") in tuple(await stream.initial_metadata())
        await auth.stub.Logout(pb.LogoutRequest(), metadata=auth.as_user(grant))
        notice = await _next_revocation(stream)
        stream.cancel()
        assert hashlib.sha256(tokens.access_token.encode()).digest() in notice.access_token_hashes
        assert list(notice.session_ids) == [grant.session_id]
        assert notice.reason == "logout"
        assert await _refused_code(auth.validate(tokens.access_token)) == "session_revoked"
        assert await _refused_code(auth.refresh(tokens.refresh_token)) == "session_revoked"
        assert len(auth.events("session.logout")) == 1


async def test_users_cannot_watch_revocations(auth) -> None:
    await auth.sign_up("watch@example.com")
    grant = await auth.validate((await auth.login("watch@example.com")).access_token)
    stream = auth.stub.WatchRevocations(pb.WatchRevocationsRequest(), metadata=auth.as_user(grant))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_list_and_revoke_sessions(auth) -> None:
    await auth.sign_up("many@example.com")
    phone = await auth.login("many@example.com", ip="198.51.100.1")
    laptop = await auth.login("many@example.com", ip="198.51.100.2")
    tablet = await auth.login("many@example.com", ip="198.51.100.3")
    me = await auth.validate(laptop.access_token)
    listed = await auth.stub.ListSessions(pb.ListSessionsRequest(), metadata=auth.as_user(me))
    assert len(listed.sessions) == 3
    current = [s for s in listed.sessions if s.current]
    assert [s.id for s in current] == [me.session_id]
    assert {s.ip for s in listed.sessions} == {"198.51.100.1", "198.51.100.2", "198.51.100.3"}
    assert all(s.device == "Firefox 120 on Linux" for s in listed.sessions)
    assert all(s.created_at.seconds > 0 and s.last_seen_at.seconds > 0 for s in listed.sessions)

    phone_id = (await auth.validate(phone.access_token)).session_id
    await auth.stub.RevokeSession(pb.RevokeSessionRequest(id=phone_id), metadata=auth.as_user(me))
    assert await _refused_code(auth.validate(phone.access_token)) == "session_revoked"

    await auth.stub.RevokeAllSessions(
        pb.RevokeAllSessionsRequest(keep_current=True), metadata=auth.as_user(me)
    )
    assert await _refused_code(auth.validate(tablet.access_token)) == "session_revoked"
    await auth.validate(laptop.access_token)  # kept
    await auth.stub.RevokeAllSessions(pb.RevokeAllSessionsRequest(), metadata=auth.as_user(me))
    assert await _refused_code(auth.validate(laptop.access_token)) == "session_revoked"


async def test_cannot_revoke_another_users_session(auth) -> None:
    await auth.sign_up("alice@example.com")
    await auth.sign_up("mallory@example.com")
    alice = await auth.validate((await auth.login("alice@example.com")).access_token)
    mallory = await auth.validate((await auth.login("mallory@example.com")).access_token)
    code = await _refused_code(
        auth.stub.RevokeSession(
            pb.RevokeSessionRequest(id=alice.session_id), metadata=auth.as_user(mallory)
        )
    )
    assert code == "not_found"
    await auth.stub.GetMe(pb.GetMeRequest(), metadata=auth.as_user(alice))


async def test_password_change_needs_current_and_ends_other_sessions(auth) -> None:
    await auth.sign_up("change@example.com")
    here = await auth.login("change@example.com")
    elsewhere = await auth.login("change@example.com")
    me = await auth.validate(here.access_token)
    code = await _refused_code(
        auth.stub.ChangePassword(
            pb.ChangePasswordRequest(
                current_password="not my password", new_password="brand new pass"
            ),
            metadata=auth.as_user(me),
        )
    )
    assert code == "invalid_credentials"
    code = await _refused_code(
        auth.stub.ChangePassword(
            pb.ChangePasswordRequest(
                current_password="correct horse battery staple", new_password="password"
            ),
            metadata=auth.as_user(me),
        )
    )
    assert code == "password_too_common"
    await auth.stub.ChangePassword(
        pb.ChangePasswordRequest(
            current_password="correct horse battery staple", new_password="brand new passphrase"
        ),
        metadata=auth.as_user(me),
    )
    await auth.validate(here.access_token)  # this session stays
    assert await _refused_code(auth.validate(elsewhere.access_token)) == "session_revoked"
    assert await _refused_code(auth.login("change@example.com")) == "invalid_credentials"
    await auth.login("change@example.com", "brand new passphrase")
    assert len(auth.events("user.password_changed")) == 1


async def test_signed_in_routes_refuse_anonymous_callers(auth) -> None:
    code = await _refused_code(auth.stub.GetMe(pb.GetMeRequest(), metadata=auth.anonymous()))
    assert code == "unauthenticated"
    code = await _refused_code(
        auth.stub.ValidateAccessToken(
            pb.ValidateAccessTokenRequest(access_token="x"), metadata=auth.anonymous()
        )
    )
    assert code == "permission_denied"


async def test_sessions_show_location_from_a_configured_geoip_database(auth_factory, tmp_path):
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    writer.insert_network(
        IPSet(["198.51.100.0/24"]),
        {"city": {"names": {"en": "Zurich"}}, "country": {"names": {"en": "Switzerland"}}},
    )
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"country": {"names": {"en": "Japan"}}})
    database = tmp_path / "geo.mmdb"
    writer.to_db_file(str(database))
    async with auth_factory(geoip_database=database) as auth:
        await auth.sign_up("geo@example.com")
        here = await auth.login("geo@example.com", ip="198.51.100.9")
        await auth.login("geo@example.com", ip="203.0.113.5")
        await auth.login("geo@example.com", ip="192.0.2.1")
        me = await auth.validate(here.access_token)
        listed = await auth.stub.ListSessions(pb.ListSessionsRequest(), metadata=auth.as_user(me))
    assert {s.ip: s.location for s in listed.sessions} == {
        "198.51.100.9": "Zurich, Switzerland",
        "203.0.113.5": "Japan",
        "192.0.2.1": "",
    }
