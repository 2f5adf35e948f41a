"""SendNotice: security emails other services have auth send (the API-key service today).

Real mail all the way: the notice is queued in auth's encrypted outbox, the relay delivers it
over SMTP to a catcher served on the test's own event loop (its Event wakes the test; no
sleeping), and the test reads what a recipient's mail client would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from smtp_catcher import SmtpCatcher, serve_smtp_catcher

from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
KEY = {
    "key_name": "Production",
    "key_prefix": "sk_live_AbC1",
    "key_last4": "wxyz",
    "key_type": "secret",
    "key_mode": "live",
    "scopes": "visitors:read team:read",
}


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[SmtpCatcher, int]]:
    async with serve_smtp_catcher() as served:
        yield served


@pytest.fixture
async def mailed(auth_factory, smtp):
    catcher, port = smtp
    async with auth_factory(smtp_host="127.0.0.1", smtp_port=port, smtp_security="none") as auth:
        auth.extra["mail"] = catcher
        yield auth


async def _workspace(auth) -> tuple[str, dict[str, str]]:
    """Ada's workspace: Ada and Dorothy own it, Grace is an admin, Katherine a member.
    Mallory owns a workspace of her own. Returns the workspace id and everyone's user id."""
    people = {}
    for name in ("ada", "dorothy", "grace", "katherine", "mallory"):
        signed_up = await auth.sign_up(f"{name}@example.com", name=name.title())
        people[name] = signed_up.user_id
        if name == "ada":
            workspace = signed_up.workspace_id
    now = auth.clock.now()

    def add_members() -> None:
        with auth.db() as conn:
            for later, (name, role) in enumerate(
                (("dorothy", "owner"), ("grace", "admin"), ("katherine", "member")), start=1
            ):
                conn.execute(
                    "INSERT INTO memberships (workspace_id, user_id, role, created_at)"
                    " VALUES (%s, %s, %s, %s)",
                    (workspace, people[name], role, now + timedelta(seconds=later)),
                )

    # Blocking writes go to a thread: on the loop that runs the auth server, a write waiting
    # for a row lock one of its coroutines holds (the mail relay settling a row) never ends.
    await asyncio.to_thread(add_members)
    await _forget_sign_up_mail(auth, len(people))
    return workspace, people


async def _forget_sign_up_mail(auth, sign_ups: int) -> None:
    """Each sign-up emailed its verification link: deliver those, then forget them (mail
    and outbox rows), so the tests count notices only."""
    catcher = auth.extra.get("mail")
    if catcher is None:
        return
    await auth.servers[0].mail_relay.run_once()
    await catcher.until(sign_ups)
    assert {m["Subject"] for m in catcher.messages} == {"Verify your Palisade email address"}
    catcher.messages.clear()
    catcher.recipients.clear()

    def forget() -> None:
        with auth.db() as conn:
            conn.execute("DELETE FROM mail_outbox")

    # In a thread: the relay may still be settling the last row it sent (its transaction holds
    # the row until it commits, on this very loop), so a blocking DELETE here would wait forever.
    await asyncio.to_thread(forget)


def _count(auth, query: str, *args: object) -> int:
    with auth.db() as conn:
        return conn.execute(query, args).fetchone()[0]


def _request(**fields) -> pb.SendNoticeRequest:
    fields.setdefault("kind", "api_key_created")
    fields.setdefault("details", KEY)
    fields.setdefault("idempotency_key", "key_0123:created")
    return pb.SendNoticeRequest(**fields)


async def _send(auth, request: pb.SendNoticeRequest, caller=None) -> int:
    reply = await auth.stub.SendNotice(
        request, metadata=caller if caller is not None else auth.signing.marker("apikeys")
    )
    return reply.recipients


async def _refused(call) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), dict(caught.value.trailing_metadata() or ()).get(
        "palisade-error-code"
    )


def _text(message: EmailMessage) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


async def test_the_owners_of_a_workspace_get_the_notice_and_no_one_else(mailed) -> None:
    auth, catcher = mailed, mailed.extra["mail"]
    workspace, _ = await _workspace(auth)
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    occurred = Timestamp()
    occurred.FromDatetime(when)
    sent = await _send(
        auth,
        _request(
            workspace_id=workspace,
            ip="203.0.113.9",
            user_agent=FIREFOX,
            occurred_at=occurred,
        ),
    )
    assert sent == 2
    messages = await catcher.until(2)
    assert sorted(m["To"] for m in messages) == ["ada@example.com", "dorothy@example.com"]
    assert sorted(r for rcpts in catcher.recipients for r in rcpts) == [
        "ada@example.com",
        "dorothy@example.com",
    ]
    text = _text(messages[0])
    assert messages[0]["Subject"] == "A new API key was created in your Palisade workspace"
    assert "Workspace: My workspace" in text
    assert "Key: sk_live_AbC1…wxyz" in text
    assert "Key name: Production" in text
    assert "Scopes: visitors:read team:read" in text
    assert "When: 2026-03-04 05:06:07 UTC" in text
    assert "IP address: 203.0.113.9" in text
    assert "Device: Firefox 120 on Linux" in text
    assert _count(auth, "SELECT count(*) FROM mail_outbox") == 2  # nothing else was queued
    [event] = auth.events("notice.sent")
    assert '"kind": "api_key_created"' in event
    assert '"recipients": 2' in event
    assert '"actor": "service:apikeys"' in event

    # Other roles when asked for; a foreign workspace's people never.
    assert await _send(auth, _request(workspace_id=workspace, roles=["admin"], idempotency_key="a"))
    [admin_mail] = [m for m in await catcher.until(3) if m["To"] == "grace@example.com"]
    assert "Key: sk_live_AbC1…wxyz" in _text(admin_mail)
    assert catcher.to("mallory@example.com") == []
    assert catcher.to("katherine@example.com") == []


async def test_one_user_and_only_while_a_live_member(mailed) -> None:
    auth, catcher = mailed, mailed.extra["mail"]
    workspace, people = await _workspace(auth)
    assert await _send(auth, _request(user_id=people["katherine"], idempotency_key="k1")) == 1
    [message] = await catcher.until(1)
    assert message["To"] == "katherine@example.com"
    assert "Workspace:" not in _text(message)  # no workspace named, none shown
    # With a workspace: only if the user is a member of it.
    request = _request(user_id=people["mallory"], workspace_id=workspace, idempotency_key="m1")
    assert await _send(auth, request) == 0

    def disable_ada() -> None:
        with auth.db() as conn:
            conn.execute("UPDATE users SET disabled_at = now() WHERE id = %s", (people["ada"],))

    # In a thread: a blocking write on the loop's thread could wait forever for a row lock held
    # by a transaction of the auth server running on this same loop.
    await asyncio.to_thread(disable_ada)
    assert await _send(auth, _request(workspace_id=workspace, idempotency_key="w1")) == 1
    assert _count(auth, "SELECT count(*) FROM mail_outbox") == 2  # Katherine's, Dorothy's


async def test_a_retried_notice_is_sent_once(mailed) -> None:
    auth, catcher = mailed, mailed.extra["mail"]
    workspace, _ = await _workspace(auth)
    request = _request(workspace_id=workspace, idempotency_key="key_1:created")
    assert await _send(auth, request) == 2
    assert await _send(auth, request) == 2  # the first answer again
    # Racing retries too: one commits its record, the others find it (or lose the insert).
    racing = _request(workspace_id=workspace, idempotency_key="key_2:created")
    answers = await asyncio.gather(*(_send(auth, racing) for _ in range(6)))
    assert answers == [2] * 6
    await catcher.until(4)
    assert _count(auth, "SELECT count(*) FROM mail_outbox") == 4
    assert _count(auth, "SELECT count(*) FROM notice_requests") == 2
    assert len(auth.events("notice.sent")) == 2
    # The same key for another notice is a caller's bug: refused, not silently ignored.
    other = _request(
        workspace_id=workspace,
        idempotency_key="key_1:created",
        details={**KEY, "key_name": "Staging"},
    )
    assert await _refused(_send(auth, other)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "idempotency_key_reused",
    )
    assert _count(auth, "SELECT count(*) FROM mail_outbox") == 4
    assert len(catcher.messages) == 4


async def test_only_the_api_key_service_may_send_notices(mailed) -> None:
    auth = mailed
    workspace, _ = await _workspace(auth)
    grant = await auth.validate((await auth.login("ada@example.com")).access_token)
    callers = {
        "gateway": auth.signing.marker("gateway"),
        "user": auth.as_user(grant),
        "api key": auth.signing.marker(
            "gateway", principal="apikey:key_1", workspace_id=workspace, scopes=["team:read"]
        ),
        "anonymous": auth.anonymous(),
    }
    for name, caller in callers.items():
        code, _ = await _refused(_send(auth, _request(workspace_id=workspace), caller))
        assert code == grpc.StatusCode.PERMISSION_DENIED, name
    assert _count(auth, "SELECT count(*) FROM mail_outbox") == 0
    assert _count(auth, "SELECT count(*) FROM notice_requests") == 0
    # The API-key service may not use the gateway's methods either.
    code, _ = await _refused(
        auth.stub.ValidateAccessToken(
            pb.ValidateAccessTokenRequest(access_token="plsd_at_" + "x" * 43),
            metadata=auth.signing.marker("apikeys"),
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_details_cannot_add_headers_lines_or_key_material(mailed) -> None:
    auth, catcher = mailed, mailed.extra["mail"]
    workspace, _ = await _workspace(auth)
    leaked = "sk_live_" + "Q" * 38
    details = {
        "key_name": "Prod\r\nBcc: mallory@example.com\r\n\r\nSign in at http://evil.example",
        "key_prefix": "sk_live_AbC1",
        "key_last4": "QQQQ",
        "source": f"https://paste.example/raw\u2028Reply-To: x@evil.example {leaked}\u202e",
    }
    request = _request(
        kind="api_key_leak_reported",
        workspace_id=workspace,
        details=details,
        user_agent="curl/8.0\r\nX-Injected: 1",
        ip="203.0.113.9\r\nX-Injected: 1",
    )
    assert await _send(auth, request) == 2
    messages = await catcher.until(2)
    assert catcher.to("mallory@example.com") == []
    assert sorted(r for rcpts in catcher.recipients for r in rcpts) == [
        "ada@example.com",
        "dorothy@example.com",
    ]
    message = messages[0]
    assert message["Bcc"] is None
    assert message["Reply-To"] is None
    assert message["X-Injected"] is None
    text = _text(message)
    lines = text.splitlines()
    assert not any(
        line.startswith(("Bcc:", "Reply-To:", "Sign in", "X-Injected")) for line in lines
    )
    assert (
        "Key name: Prod\\r\\nBcc: mallory@example.com\\r\\n\\r\\nSign in at http://evil.example"
        in lines
    )
    source = next(line for line in lines if line.startswith("Reported location: "))
    assert "\\u2028Reply-To: x@evil.example" in source
    assert "\\u202e" in source
    assert leaked not in text
    assert "sk_live_…[redacted]" in source
    assert "IP address: unknown" in lines  # not an IP address: not shown
    assert sum(line.startswith("Device: ") for line in lines) == 1


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"kind": "password_reset"}, "unknown_notice_kind"),
        ({"kind": ""}, "unknown_notice_kind"),
        ({"details": {**KEY, "source": "x"}}, "invalid_notice_details"),  # not for this kind
        ({"details": {"secret": "sk_live_x"}}, "invalid_notice_details"),
        ({"details": {"key_name": "x" * 201}}, "invalid_notice_details"),
        ({"details": {"key_last4": "abcde"}}, "invalid_notice_details"),
        ({"details": {"key_prefix": "sk_live_AbCdE"}}, "invalid_notice_details"),
        ({"details": {"key_mode": "prod"}}, "invalid_notice_details"),
        ({"idempotency_key": ""}, "invalid_idempotency_key"),
        ({"idempotency_key": "k" * 129}, "invalid_idempotency_key"),
        ({"idempotency_key": "retry\n1"}, "invalid_idempotency_key"),
        ({"workspace_id": ""}, "invalid_notice_recipients"),
        ({"roles": ["superuser"]}, "invalid_notice_recipients"),
    ],
)
async def test_bad_requests_are_refused_with_a_stable_code(auth, fields, code) -> None:
    fields.setdefault("workspace_id", "ws_0123")
    assert await _refused(_send(auth, _request(**fields))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        code,
    )
    assert _count(auth, "SELECT count(*) FROM notice_requests") == 0


async def test_webhooks_tells_the_owners_of_a_disabled_endpoint(mailed) -> None:
    """The webhooks service (its endpoint failed for 5 days) has the owners emailed."""
    auth, catcher = mailed, mailed.extra["mail"]
    workspace, _ = await _workspace(auth)
    request = pb.SendNoticeRequest(
        kind="webhook_disabled",
        workspace_id=workspace,
        roles=["owner"],
        details={
            "webhook_id": "whk_" + "b" * 32,
            "url_origin": "https://hooks.example.com",
            "failing_since": "2026-03-01T00:00:00.000Z",
        },
        idempotency_key="webhook_disabled:whk_b:1",
    )
    assert await _send(auth, request, caller=auth.signing.marker("webhooks")) == 2
    messages = await catcher.until(2)
    assert sorted(m["To"] for m in messages) == ["ada@example.com", "dorothy@example.com"]
    text = _text(messages[0])
    assert messages[0]["Subject"] == "A webhook endpoint of your Palisade workspace was disabled"
    assert "Endpoint: whk_" + "b" * 32 in text
    assert "Destination: https://hooks.example.com" in text
    # Sent again (a sweep that died before recording it): no second email.
    assert await _send(auth, request, caller=auth.signing.marker("webhooks")) == 2
    assert _count(auth, "SELECT count(*) FROM mail_outbox") == 2
