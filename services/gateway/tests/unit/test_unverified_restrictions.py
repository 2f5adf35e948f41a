"""Routes an unverified account may not use: the access rule, the cached grant, the route table.

The action list comes from auth with each validated token (ValidateAccessTokenResponse
.restrictions); a route names its action in its proto access rule (restricted_action).
"""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from palisade.common.caller import AssertionSigner
from palisade.common.clock import ManualClock
from palisade.common.edge_keys import KeySource, ServiceKeys
from palisade.gateway.access import Forbidden, KeyGrant, check_key, check_person
from palisade.gateway.edge_auth import EdgeAuthenticator
from palisade.gateway.problems import EMAIL_NOT_VERIFIED
from palisade.gateway.routes import build_routes, match
from palisade.gateway.token_cache import Grant, TokenCache
from palisade_api.apikeys.v1 import apikeys_pb2
from palisade_api.auth.v1 import auth_pb2
from palisade_api.common.v1 import access_pb2

TOKEN = "plsd_at_" + "U" * 43
UNVERIFIED = frozenset({"create_api_keys", "enrol_second_factor", "invite_members"})


def _grant(*, role: str = "owner", restrictions: frozenset[str] = frozenset()) -> Grant:
    return Grant("u1", "ws", role, "s1", 10**10, 0.0, restrictions)


def _rule(action: str = "", roles: tuple[str, ...] = ()) -> access_pb2.AccessRule:
    return access_pb2.AccessRule(
        access=access_pb2.ACCESS_USER, restricted_action=action, roles=list(roles)
    )


def test_a_person_with_the_routes_action_restricted_is_refused() -> None:
    with pytest.raises(Forbidden) as caught:
        check_person(_rule("create_api_keys"), _grant(restrictions=UNVERIFIED))
    assert caught.value.code == EMAIL_NOT_VERIFIED == "email_not_verified"


def test_other_actions_and_unrestricted_routes_pass() -> None:
    only_second_factor = frozenset({"enrol_second_factor"})  # the setting was emptied
    check_person(_rule("create_api_keys"), _grant(restrictions=only_second_factor))
    check_person(_rule(), _grant(restrictions=UNVERIFIED))  # the route names no action
    check_person(_rule("enrol_second_factor"), _grant())  # verified: no restrictions
    with pytest.raises(Forbidden) as caught:
        check_person(_rule("enrol_second_factor"), _grant(restrictions=only_second_factor))
    assert caught.value.code == EMAIL_NOT_VERIFIED


def test_the_role_is_checked_first() -> None:
    """A member who may not use the route at all hears that, not that they should verify."""
    with pytest.raises(Forbidden) as caught:
        check_person(
            _rule("create_api_keys", roles=("owner", "admin")),
            _grant(role="member", restrictions=UNVERIFIED),
        )
    assert caught.value.code == "insufficient_role"


def test_api_keys_are_never_refused_for_the_action() -> None:
    rule = access_pb2.AccessRule(
        access=access_pb2.ACCESS_USER,
        api_keys=True,
        scope="team:read",
        restricted_action="invite_members",
    )
    check_key(rule, KeyGrant("key_1", "ws", frozenset({"team:read"}), False, ()))


def _routes():
    return build_routes(
        [
            (auth_pb2.DESCRIPTOR.services_by_name["AuthService"], "auth"),
            (apikeys_pb2.DESCRIPTOR.services_by_name["ApiKeysService"], "apikeys"),
        ]
    )


@pytest.mark.parametrize(
    ("method", "path", "action"),
    [
        ("POST", "/v1/api-keys", "create_api_keys"),
        ("POST", "/v1/api-keys/key_1/rotate", "create_api_keys"),  # a rotation makes a key
        ("POST", "/v1/me/totp", "enrol_second_factor"),
        ("POST", "/v1/me/totp/confirm", "enrol_second_factor"),
        ("POST", "/v1/me/passkeys/options", "enrol_second_factor"),
        ("POST", "/v1/me/passkeys", "enrol_second_factor"),
        # Not enrolments: an unverified account can have no factor, and these make none.
        ("DELETE", "/v1/me/totp", ""),
        ("POST", "/v1/me/backup-codes", ""),
        ("GET", "/v1/api-keys", ""),
        ("POST", "/v1/api-keys/key_1/revoke", ""),
        ("GET", "/v1/me", ""),
    ],
)
def test_the_routes_name_their_action(method: str, path: str, action: str) -> None:
    route, _ = match(_routes(), method, path)
    assert route.access.restricted_action == action


def _public_service_with_a_restricted_action():
    """A public route naming an action (built here, in the default pool, once)."""
    from google.api import annotations_pb2
    from google.protobuf import descriptor_pb2, descriptor_pool

    pool, name = descriptor_pool.Default(), "gateway_tests/public_restricted.proto"
    try:
        return pool.FindFileByName(name).services_by_name["Open"]
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto(
        name=name,
        package="gateway_tests.public.v1",
        syntax="proto3",
        dependency=["google/api/annotations.proto", access_pb2.DESCRIPTOR.name],
    )
    proto.message_type.add(name="Empty")
    method = proto.service.add(name="Open").method.add(
        name="Go",
        input_type=".gateway_tests.public.v1.Empty",
        output_type=".gateway_tests.public.v1.Empty",
    )
    method.options.Extensions[annotations_pb2.http].post = "/v1/go"
    rule = method.options.Extensions[access_pb2.access]
    rule.access = access_pb2.ACCESS_PUBLIC
    rule.restricted_action = "create_api_keys"
    pool.Add(proto)
    return pool.FindFileByName(name).services_by_name["Open"]


def test_a_restricted_action_on_a_route_not_for_people_is_refused_at_start() -> None:
    """Only people carry restrictions: on a public route the rule would silently never apply."""
    with pytest.raises(ValueError, match="restricted_action"):
        build_routes([(_public_service_with_a_restricted_action(), "open")])


class _Auth:
    """Auth's ValidateAccessToken for one unverified person, counting calls."""

    def __init__(self, clock: ManualClock, restrictions: list[str]) -> None:
        self.clock = clock
        self.restrictions = restrictions
        self.calls = 0

    async def ValidateAccessToken(self, request, **_options):
        self.calls += 1
        return auth_pb2.ValidateAccessTokenResponse(
            user_id="u1",
            workspace_id="ws",
            role="owner",
            session_id="s1",
            expires_at=Timestamp(seconds=int(self.clock.timestamp()) + 3600),
            restrictions=self.restrictions,
        )


def _edge(auth: _Auth, clock: ManualClock) -> tuple[EdgeAuthenticator, TokenCache]:
    cache = TokenCache(max_entries=10, max_age_seconds=60, clock=clock)
    signer = AssertionSigner(
        keys=KeySource.fixed(ServiceKeys.generate("gateway")), clock=clock, ttl_seconds=60
    )
    edge = EdgeAuthenticator(stub=auth, signer=signer, cache=cache, timeout=1)
    edge.revocations.receive(auth_pb2.Revocation(heartbeat=True))  # the feed has caught up
    return edge, cache


async def test_restrictions_are_kept_with_the_cached_grant() -> None:
    clock = ManualClock()
    auth = _Auth(clock, ["enrol_second_factor", "create_api_keys"])
    edge, cache = _edge(auth, clock)
    first = await edge.grant_for(TOKEN)
    assert first.restrictions == {"create_api_keys", "enrol_second_factor"}
    assert len(cache) == 1
    auth.restrictions = []  # auth would answer otherwise now, but the cache answers
    again = await edge.grant_for(TOKEN)
    assert auth.calls == 1
    assert again.restrictions == first.restrictions
    with pytest.raises(Forbidden):
        check_person(_rule("create_api_keys"), again)


async def test_a_verified_person_has_no_restrictions_and_concurrent_misses_share_them() -> None:
    clock = ManualClock()
    auth = _Auth(clock, [])
    edge, _ = _edge(auth, clock)
    grants = await asyncio.gather(*(edge.grant_for(TOKEN) for _ in range(5)))
    assert {g.restrictions for g in grants} == {frozenset()}
    for grant in grants:
        check_person(_rule("enrol_second_factor"), grant)
