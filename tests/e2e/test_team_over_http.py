"""The team over real HTTP through the gateway, with the real SMTP catcher: invitations for a
new and an existing person, expiry on the injectable clock, the address binding, 20 parallel
accepts, who may invite or manage whom, the last owner, and what removal and role changes do
to the member's cached session and API key on their next request."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest

from .conftest import Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

INVITE_SUBJECT = "You're invited to a Palisade workspace"
LINK = re.compile(r"(https?://\S+/auth/invitation)\?token=(plsd_inv_[A-Za-z0-9_-]+)")
NEW_PASSWORD = "a long and unguessable passphrase"


async def _owner(suite: Suite, email: str = "ada@example.com") -> dict:
    """A verified account's tokens (its own workspace, as owner)."""
    return await suite.sign_up_and_log_in(email)


async def _invite(suite: Suite, token: str, email: str, role: str = "member") -> dict:
    status, body, _ = await suite.json_call(
        "POST", "/v1/team/invitations", json={"email": email, "role": role}, token=token
    )
    assert status == 201, body
    return body


async def _link(suite: Suite, email: str, nth: int = 1) -> tuple[str, str]:
    async with asyncio.timeout(10):
        while True:
            found = [m for m in suite.mail.to(email) if m["Subject"] == INVITE_SUBJECT]
            if len(found) >= nth:
                text = str(found[nth - 1].get_body(("plain",)).get_content())
                match = LINK.search(text)
                assert match is not None, text
                return match.group(1), match.group(2)
            suite.mail.arrived.clear()
            await suite.mail.arrived.wait()


async def _accept(suite: Suite, body: dict, token: str | None = None):
    return await suite.json_call("POST", "/v1/auth/invitations/accept", json=body, token=token)


async def _evicted(suite: Suite, access_token: str) -> None:
    """Waits (bounded) until the gateway's cache no longer holds the token: the eviction
    travels over the revocation feed; no request is made meanwhile."""
    import hashlib

    digest = hashlib.sha256(access_token.encode()).digest()
    for _ in range(200):
        if suite.gateway.cache.get(digest) is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the gateway kept the token cached")


async def test_a_new_person_joins_by_the_emailed_link(suite: Suite) -> None:
    ada = await _owner(suite)
    created = await _invite(suite, ada["accessToken"], "newcomer@example.com", "admin")
    assert created["invitationId"].startswith("inv_")
    assert created["expiresAt"]
    page, token = await _link(suite, "newcomer@example.com")
    assert page.endswith("/auth/invitation")
    # The link's page only shows a form: a GET consumes nothing.
    status, headers, _ = await suite.call("GET", f"/auth/invitation?token={token}")
    assert status == 200
    assert headers["Referrer-Policy"] == "no-referrer"

    status, tokens, headers = await _accept(
        suite, {"token": token, "name": "New Comer", "password": NEW_PASSWORD}
    )
    assert status == 200, tokens
    assert headers["Cache-Control"] == "no-store"
    status, me, _ = await suite.json_call("GET", "/v1/me", token=tokens["accessToken"])
    assert (me["email"], me["role"], me["emailVerified"]) == (
        "newcomer@example.com",
        "admin",
        True,
    )
    status, ada_me, _ = await suite.json_call("GET", "/v1/me", token=ada["accessToken"])
    assert me["workspaceId"] == ada_me["workspaceId"]
    status, listed, _ = await suite.json_call(
        "GET", "/v1/team/invitations", token=ada["accessToken"]
    )
    [invitation] = listed["invitations"]
    assert (invitation["email"], invitation["role"], invitation["state"]) == (
        "newcomer@example.com",
        "admin",
        "accepted",
    )
    assert invitation["createdBy"] == ada_me["userId"]
    status, again, _ = await _accept(
        suite, {"token": token, "name": "New Comer", "password": NEW_PASSWORD}
    )
    assert (status, again["code"]) == (401, "invalid_invitation")


async def test_an_existing_person_joins_with_their_bearer_and_only_their_own(
    suite: Suite,
) -> None:
    ada = await _owner(suite)
    grace = await _owner(suite, "grace@example.com")
    mallory = await _owner(suite, "mallory@example.com")
    await _invite(suite, ada["accessToken"], "grace@example.com")
    _, token = await _link(suite, "grace@example.com")
    status, body, _ = await _accept(suite, {"token": token, "name": "G", "password": NEW_PASSWORD})
    assert (status, body["code"]) == (401, "sign_in_required")
    status, body, _ = await _accept(suite, {"token": token}, mallory["accessToken"])
    assert (status, body["code"]) == (403, "invitation_email_mismatch")
    # An API key is no person: refused at the gateway, the link untouched.
    status, created, _ = await suite.json_call(
        "POST",
        "/v1/api-keys",
        json={"name": "grace's", "type": "secret", "scopes": ["team:read"]},
        token=grace["accessToken"],
    )
    assert status == 201, created
    status, body, _ = await _accept(suite, {"token": token}, created["key"])
    assert (status, body["code"]) == (403, "people_only")
    status, body, _ = await _accept(suite, {"token": token}, "plsd_at_" + "A" * 43)
    assert status == 401, body
    status, tokens, _ = await _accept(suite, {"token": token}, grace["accessToken"])
    assert status == 200, tokens
    status, workspaces, _ = await suite.json_call(
        "GET", "/v1/me/workspaces", token=tokens["accessToken"]
    )
    by_role = {w["role"]: w["workspaceId"] for w in workspaces["workspaces"]}
    assert sorted(by_role) == ["member", "owner"]
    # Back to her own workspace: a new session there, the one in Ada's ends.
    own = by_role["owner"]
    status, switched, _ = await suite.json_call(
        "POST", "/v1/me/workspace", json={"workspaceId": own}, token=tokens["accessToken"]
    )
    assert status == 200, switched
    status, me, _ = await suite.json_call("GET", "/v1/me", token=switched["accessToken"])
    assert (me["workspaceId"], me["role"]) == (own, "owner")
    status, _, _ = await suite.call("GET", "/v1/me", token=tokens["accessToken"])
    assert status == 401
    status, body, _ = await suite.json_call(
        "POST",
        "/v1/me/workspace",
        json={"workspaceId": own.replace("ws_", "ws_0")},
        token=switched["accessToken"],
    )
    assert (status, body["code"]) == (404, "not_found")


async def test_an_invitation_expires_after_seven_days(suite: Suite) -> None:
    ada = await _owner(suite)
    await _invite(suite, ada["accessToken"], "late@example.com")
    _, token = await _link(suite, "late@example.com")
    suite.clock.advance(timedelta(days=7))
    status, body, _ = await _accept(
        suite, {"token": token, "name": "Late", "password": NEW_PASSWORD}
    )
    assert (status, body["code"]) == (400, "invitation_expired")


async def test_of_twenty_parallel_accepts_exactly_one_wins(suite: Suite) -> None:
    ada = await _owner(suite)
    await _invite(suite, ada["accessToken"], "racer@example.com")
    _, token = await _link(suite, "racer@example.com")
    body = {"token": token, "name": "Racer", "password": NEW_PASSWORD}
    results = await asyncio.gather(*(_accept(suite, body) for _ in range(20)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] + [401] * 19, results
    assert {r[1]["code"] for r in results if r[0] == 401} == {"invalid_invitation"}


async def test_roles_limit_who_invites_and_the_last_owner_stays(suite: Suite) -> None:
    ada = await _owner(suite)
    await _invite(suite, ada["accessToken"], "admin@example.com", "admin")
    _, token = await _link(suite, "admin@example.com")
    _, admin, _ = await _accept(suite, {"token": token, "name": "A", "password": NEW_PASSWORD})
    status, body, _ = await suite.json_call(
        "POST",
        "/v1/team/invitations",
        json={"email": "boss@example.com", "role": "owner"},
        token=admin["accessToken"],
    )
    assert (status, body["code"]) == (403, "role_above_yours")
    _, ada_me, _ = await suite.json_call("GET", "/v1/me", token=ada["accessToken"])
    status, body, _ = await suite.json_call(
        "PATCH",
        f"/v1/team/members/{ada_me['userId']}",
        json={"role": "member"},
        token=admin["accessToken"],
    )
    assert (status, body["code"]) == (403, "role_above_yours")
    for method, json in (("PATCH", {"role": "admin"}), ("DELETE", None)):
        status, body, _ = await suite.json_call(
            method, f"/v1/team/members/{ada_me['userId']}", json=json, token=ada["accessToken"]
        )
        assert (status, body["code"]) == (409, "last_owner")
    status, body, _ = await suite.json_call(
        "PATCH",
        f"/v1/team/members/{ada_me['userId']}",
        json={"role": "emperor"},
        token=ada["accessToken"],
    )
    assert (status, body["code"]) == (400, "invalid_role")


async def test_a_role_change_shows_on_the_members_next_request(suite: Suite) -> None:
    ada = await _owner(suite)
    await _invite(suite, ada["accessToken"], "kay@example.com", "member")
    _, token = await _link(suite, "kay@example.com")
    _, kay, _ = await _accept(suite, {"token": token, "name": "Kay", "password": NEW_PASSWORD})
    _, me, _ = await suite.json_call("GET", "/v1/me", token=kay["accessToken"])  # now cached
    status, body, _ = await suite.json_call("GET", "/v1/team/invitations", token=kay["accessToken"])
    assert (status, body["code"]) == (403, "insufficient_role")
    status, member, _ = await suite.json_call(
        "PATCH",
        f"/v1/team/members/{me['userId']}",
        json={"role": "admin"},
        token=ada["accessToken"],
    )
    assert (status, member["role"], member["email"]) == (200, "admin", "kay@example.com")
    await _evicted(suite, kay["accessToken"])
    status, whoami, _ = await suite.json_call("GET", "/v1/whoami", token=kay["accessToken"])
    assert (status, whoami["role"]) == (200, "admin")
    status, _, _ = await suite.json_call("GET", "/v1/team/invitations", token=kay["accessToken"])
    assert status == 200  # the member was not signed out: the same token, the new role


async def test_a_removed_member_loses_their_session_and_key_at_once(suite: Suite) -> None:
    ada = await _owner(suite)
    await _invite(suite, ada["accessToken"], "kay@example.com", "admin")
    _, token = await _link(suite, "kay@example.com")
    _, kay, _ = await _accept(suite, {"token": token, "name": "Kay", "password": NEW_PASSWORD})
    status, created, _ = await suite.json_call(
        "POST",
        "/v1/api-keys",
        json={"name": "kay's", "type": "secret", "scopes": ["team:read"]},
        token=kay["accessToken"],
    )
    assert status == 201, created
    key = created["key"]
    for credential in (kay["accessToken"], key):  # both work, and are now cached
        status, _, _ = await suite.call("GET", "/v1/team/members", token=credential)
        assert status == 200
    _, me, _ = await suite.json_call("GET", "/v1/me", token=kay["accessToken"])
    status, _, body = await suite.call(
        "DELETE", f"/v1/team/members/{me['userId']}", token=ada["accessToken"]
    )
    assert (status, body) == (204, b"")
    await _evicted(suite, kay["accessToken"])
    status, problem, _ = await suite.json_call("GET", "/v1/me", token=kay["accessToken"])
    assert status == 401, problem
    # The key goes through auth's durable request to apikeys: its relay is woken by the
    # commit; this waits (bounded, real time) for that call, not for any timer.
    for _ in range(500):
        status, _, _ = await suite.call("GET", "/v1/team/members", token=key)
        if status == 401:
            break
        await asyncio.sleep(0.01)
    assert status == 401
    # Kay keeps their account: signing in again lands in their own (personal) workspace.
    status, login, _ = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": "kay@example.com", "password": NEW_PASSWORD}
    )
    assert status == 200, login
    _, again, _ = await suite.json_call("GET", "/v1/me", token=login["accessToken"])
    assert again["role"] == "owner"
    assert again["workspaceId"] != me["workspaceId"]
    status, members, _ = await suite.json_call("GET", "/v1/team/members", token=ada["accessToken"])
    assert [m["email"] for m in members["members"]] == ["ada@example.com"]
