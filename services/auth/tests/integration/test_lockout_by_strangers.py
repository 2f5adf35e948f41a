"""Strangers cannot lock the owner out (issue 9 item 3): over gRPC, on real Redis."""

from __future__ import annotations

import grpc
import pytest

from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
OWNER_IP = "203.0.113.7"
THROTTLE = {
    "throttle_ip_failures": 50,
    "throttle_account_ip_failures": 3,
    "throttle_account_failures": 6,
    "throttle_window_seconds": 600,
}


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("palisade-error-code")


async def _login_code(auth, email: str, password: str, ip: str) -> str | None:
    try:
        await auth.login(email, password, ip=ip)
    except grpc.aio.AioRpcError as error:
        return _code(error)
    return None


async def test_the_owner_logs_in_from_a_known_client_while_strangers_hold_the_cap(
    auth_factory,
) -> None:
    async with auth_factory(**THROTTLE) as auth:
        await auth.sign_up("owner@example.com")
        await auth.login("owner@example.com", ip=OWNER_IP)
        for i in range(6):  # one guess from each of many addresses
            assert await _login_code(
                auth, "owner@example.com", "wrong guess", f"2001:db8:{i}::1"
            ) == ("invalid_credentials")
        # A stranger, even with the right password, waits; the owner's client does not.
        assert await _login_code(
            auth, "owner@example.com", "correct horse battery staple", "198.51.100.9"
        ) == ("rate_limited")
        assert (
            await _login_code(auth, "owner@example.com", "correct horse battery staple", OWNER_IP)
            is None
        )


async def test_many_ipv6_addresses_of_one_slash_64_are_one_client(auth_factory) -> None:
    async with auth_factory(**THROTTLE) as auth:
        await auth.sign_up("v6@example.com")
        for i in range(3):
            assert await _login_code(
                auth, "v6@example.com", "wrong guess", f"2001:db8:aa:bb::{i + 1}"
            ) == ("invalid_credentials")
        assert await _login_code(
            auth, "v6@example.com", "another guess", "2001:db8:aa:bb:1234::99"
        ) == ("rate_limited")


async def test_a_stranger_cannot_spend_the_owners_magic_link_budget(auth_factory) -> None:
    async with auth_factory(magic_link_email_ip_requests=3, magic_link_email_requests=10) as auth:
        await auth.sign_up("links@example.com")

        async def request(ip: str) -> str | None:
            try:
                await auth.stub.RequestMagicLink(
                    pb.RequestMagicLinkRequest(email="links@example.com"),
                    metadata=auth.anonymous(ip),
                )
            except grpc.aio.AioRpcError as error:
                return _code(error)
            return None

        for _ in range(3):
            assert await request("198.51.100.66") is None
        assert await request("198.51.100.66") == "rate_limited"  # this stranger is done
        assert await request("2001:db8:66::1") is None  # (a fresh client still has some)
        assert await request(OWNER_IP) is None  # and the owner still gets a link
        with auth.db() as conn:
            links = conn.execute("SELECT count(*) FROM magic_links").fetchone()[0]
        assert links == 5


async def test_strangers_on_several_networks_cannot_spend_a_known_clients_magic_links(
    auth_factory,
) -> None:
    # Review finding: 4 networks x the per-(email, client) allowance spent the whole per-email
    # cap, and then the owner got no link either.
    async with auth_factory(magic_link_email_ip_requests=2, magic_link_email_requests=4) as auth:
        await auth.sign_up("known@example.com")
        await auth.login("known@example.com", ip=OWNER_IP)  # the owner's client is known now

        async def request(ip: str) -> str | None:
            try:
                await auth.stub.RequestMagicLink(
                    pb.RequestMagicLinkRequest(email="known@example.com"),
                    metadata=auth.anonymous(ip),
                )
            except grpc.aio.AioRpcError as error:
                return _code(error)
            return None

        for network in range(2):
            for _ in range(2):
                assert await request(f"2001:db8:{network}::1") is None
        assert await request("2001:db8:9::1") == "rate_limited"  # the per-email cap is spent
        assert await request(OWNER_IP) is None  # but not for the owner's own client
        with auth.db() as conn:
            links = conn.execute("SELECT count(*) FROM magic_links").fetchone()[0]
        assert links == 5
