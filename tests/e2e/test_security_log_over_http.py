"""The security log over real HTTP: auth's events travel the outbox and forwarder to audit, and
people read them through the gateway. A person sees their own events; owners and admins their
workspace's (a member gets 403, nobody sees another workspace's); the checkpoint verifies
offline with nothing but /v1/audit/checkpoint, /v1/audit/keys and the cryptography library."""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import datetime, timedelta

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .conftest import PASSWORD, Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

INVITE_SUBJECT = "You're invited to a Palisade workspace"
LINK = re.compile(r"token=(plsd_inv_[A-Za-z0-9_-]+)")


async def _events(suite: Suite, path: str, token: str, wanted: str) -> list[dict]:
    """The listing once it shows an event of type `wanted` (events reach audit through each
    service's outbox forwarder: a moment after the request that caused them)."""
    async with asyncio.timeout(15):
        while True:
            status, body, _ = await suite.json_call("GET", path, token=token)
            assert status == 200, body
            if any(e["type"] == wanted for e in body.get("events", [])):
                return list(body["events"])
            await asyncio.sleep(0.1)


async def _member(suite: Suite, owner_token: str, email: str) -> dict:
    """Tokens of a person who joined the owner's workspace as a member."""
    status, body, _ = await suite.json_call(
        "POST", "/v1/team/invitations", json={"email": email, "role": "member"}, token=owner_token
    )
    assert status == 201, body
    async with asyncio.timeout(10):
        while not [m for m in suite.mail.to(email) if m["Subject"] == INVITE_SUBJECT]:
            suite.mail.arrived.clear()
            await suite.mail.arrived.wait()
    [mail] = [m for m in suite.mail.to(email) if m["Subject"] == INVITE_SUBJECT]
    match = LINK.search(str(mail.get_body(("plain",)).get_content()))
    assert match is not None
    status, tokens, _ = await suite.json_call(
        "POST",
        "/v1/auth/invitations/accept",
        json={"token": match.group(1), "name": "Mem Ber", "password": PASSWORD + "!"},
    )
    assert status == 200, tokens
    return dict(tokens)


async def test_own_events_and_the_workspace_log(suite: Suite) -> None:
    ada = await suite.sign_up_and_log_in("ada-log@example.com")
    status, me, _ = await suite.json_call("GET", "/v1/me", token=ada["accessToken"])
    mine = await _events(
        suite, "/v1/me/security-events", ada["accessToken"], "session.login_succeeded"
    )
    login = next(e for e in mine if e["type"] == "session.login_succeeded")
    assert login["actor"] == {"type": "user", "id": me["userId"]}
    assert login["ip"] == "127.0.0.1"
    assert login["workspaceId"] == me["workspaceId"]
    assert login["source"] == "auth"
    assert login["device"]["kind"]

    workspace = await _events(
        suite, "/v1/audit/events", ada["accessToken"], "session.login_succeeded"
    )
    assert {e["workspaceId"] for e in workspace} == {me["workspaceId"]}
    # Another person's workspace log never shows Ada's events, nor Ada hers.
    bob = await suite.sign_up_and_log_in("bob-log@example.com")
    theirs = await _events(suite, "/v1/audit/events", bob["accessToken"], "session.login_succeeded")
    assert {e["id"] for e in theirs}.isdisjoint({e["id"] for e in workspace})
    assert me["workspaceId"] not in {e["workspaceId"] for e in theirs}

    status, page, _ = await suite.json_call(
        "GET", "/v1/audit/events?type=session.login_succeeded&pageSize=1", token=ada["accessToken"]
    )
    assert status == 200
    assert [e["type"] for e in page["events"]] == ["session.login_succeeded"]


async def test_members_are_refused_the_workspace_log(suite: Suite) -> None:
    ada = await suite.sign_up_and_log_in("ada-owner@example.com")
    member = await _member(suite, ada["accessToken"], "member-log@example.com")
    for path in ("/v1/audit/events", "/v1/audit/checkpoint"):
        status, body, _ = await suite.json_call("GET", path, token=member["accessToken"])
        assert (status, body["code"]) == (403, "insufficient_role")
    # Their own history is theirs to read.
    own = await _events(suite, "/v1/me/security-events", member["accessToken"], "member.joined")
    assert own


async def test_bad_queries_are_clear_400s(suite: Suite) -> None:
    ada = await suite.sign_up_and_log_in("ada-bad@example.com")
    token = ada["accessToken"]
    now = datetime.now().astimezone()
    since, until = (now.isoformat(), (now - timedelta(days=1)).isoformat())
    cases = [
        (f"/v1/audit/events?since={since}&until={until}".replace("+", "%2B"), "invalid_range"),
        ("/v1/audit/events?type=session.nope", "unknown_event_type"),
        ("/v1/audit/events?pageToken=p1.forged.token", "invalid_page_token"),
        ("/v1/me/security-events?pageToken=nope", "invalid_page_token"),
        ("/v1/audit/events?since=yesterday", "invalid_request"),
    ]
    for path, code in cases:
        status, body, _ = await suite.json_call("GET", path, token=token)
        assert (status, body["code"]) == (400, code), path
    status, body, _ = await suite.json_call("GET", "/v1/audit/events")
    assert status == 401


async def test_the_checkpoint_verifies_offline(suite: Suite) -> None:
    ada = await suite.sign_up_and_log_in("ada-check@example.com")
    await _events(suite, "/v1/audit/events", ada["accessToken"], "session.login_succeeded")
    status, checkpoint, _ = await suite.json_call(
        "GET", "/v1/audit/checkpoint", token=ada["accessToken"]
    )
    assert status == 200, checkpoint
    status, keys, _ = await suite.json_call("GET", "/v1/audit/keys")  # no credentials
    assert status == 200
    [key] = [k for k in keys["keys"] if k["keyId"] == checkpoint["keyId"]]
    assert key["algorithm"] == "Ed25519"
    # Only the two JSON documents and the cryptography library from here on.
    signed_at = checkpoint["signedAt"]
    note = (
        f"palisade-audit-checkpoint/v1\n{checkpoint['workspaceId']}\n{checkpoint['size']}\n"
        f"{checkpoint['head']}\n{signed_at}\n"
    )
    assert checkpoint["note"] == note
    assert int(checkpoint["size"]) >= 1
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key["publicKey"]))
    public.verify(base64.b64decode(checkpoint["signature"]), note.encode())  # raises if forged
    forged = note.replace(f"\n{checkpoint['size']}\n", f"\n{int(checkpoint['size']) + 1}\n")
    with pytest.raises(InvalidSignature):
        public.verify(base64.b64decode(checkpoint["signature"]), forged.encode())
