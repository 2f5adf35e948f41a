"""Deleting an account through the gateway (issue 13 item 7), with real client addresses and
a real SMTP catcher: the person signs up, verifies the address from the emailed link, creates
an API key, turns TOTP on and signs in from two networks (127.0.0.1 and 127.0.0.2); then
DELETE /v1/me. Afterwards auth's and apikeys' databases (and audit's, and every file of the
suite's data directory) hold none of the person's PII, every ciphertext of theirs captured
from auth's database before the deletion answers subject_erased, their tokens and key fail on
the next request, the address can sign up as a new person, and the security log still
verifies (`palisade-audit verify`).
"""

from __future__ import annotations

import asyncio
import io
import re
import uuid
from datetime import timedelta
from email.message import EmailMessage
from urllib.parse import parse_qs, urlparse

import aiohttp
import psycopg
import pyotp
import pytest
from sqlalchemy.engine import make_url

from palisade.audit.cli import verify
from palisade.audit.config import AuditSettings
from palisade.common.aad import associated_data
from palisade.common.caller import AssertionSigner
from palisade.common.crypto_client import CryptoClient, SubjectErased
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.grpc_client import ServiceIdentity, insecure_channel

from .conftest import PASSWORD, Suite
from .test_new_ip_alerts_over_http import client_from, log_in

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

VERIFY_SUBJECT = "Verify your Palisade email address"
_VERIFY = re.compile(r"https?://\S+/auth/verify-email\?token=[A-Za-z0-9_%-]+")


async def _mail(suite: Suite, to: str, subject: str) -> EmailMessage:
    async with asyncio.timeout(10):
        while True:
            found = [m for m in suite.mail.to(to) if m["Subject"] == subject]
            if found:
                return found[0]
            suite.mail.arrived.clear()
            await suite.mail.arrived.wait()


def _verification_token(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    [link] = _VERIFY.findall(body.get_content())
    [token] = parse_qs(urlparse(link).query)["token"]
    return token


async def _rows(database_url: str, query: str, *params: object) -> list[tuple]:
    url = make_url(database_url).set(drivername="postgresql")
    async with await psycopg.AsyncConnection.connect(
        url.render_as_string(hide_password=False)
    ) as conn:
        return list(await (await conn.execute(query, params)).fetchall())


async def _execute(database_url: str, statement: str, *params: object) -> None:
    url = make_url(database_url).set(drivername="postgresql")
    async with await psycopg.AsyncConnection.connect(
        url.render_as_string(hide_password=False), autocommit=True
    ) as conn:
        await conn.execute(statement, params)


async def _ciphertexts(suite: Suite, user_id: str) -> list[tuple[bytes, bytes]]:
    """(envelope, associated data) of everything auth stores sealed about the user."""
    db = suite.auth_database_url
    [(email_ct, name_ct)] = await _rows(
        db, "SELECT email_ct, name_ct FROM users WHERE id = %s", user_id
    )
    items = [
        (bytes(email_ct), associated_data("auth", "user", user_id, "email")),
        (bytes(name_ct), associated_data("auth", "user", user_id, "name")),
    ]
    for (secret_ct,) in await _rows(
        db, "SELECT secret_ct FROM totp_credentials WHERE user_id = %s", user_id
    ):
        items.append((bytes(secret_ct), associated_data("auth", "user", user_id, "totp_secret")))
    for code_id, code_ct in await _rows(
        db, "SELECT id, code_ct FROM backup_codes WHERE user_id = %s", user_id
    ):
        items.append((bytes(code_ct), associated_data("auth", "backup_code", user_id, code_id)))
    for mail_id, message_ct in await _rows(
        db,
        "SELECT id, message_ct FROM mail_outbox WHERE user_id = %s AND message_ct IS NOT NULL",
        user_id,
    ):
        items.append(
            (bytes(message_ct), associated_data("auth", "mail_outbox", mail_id, "message"))
        )
    return items


def _crypto_as_auth(suite: Suite) -> tuple[CryptoClient, object]:
    """A crypto client signing as auth (the keys of the suite's data directory)."""
    assert suite.data_dir is not None
    master = read_document(suite.data_dir / "keys" / "edges.json")
    signer = AssertionSigner(
        keys=KeySource.from_master(master, "auth"), clock=suite.clock, ttl_seconds=60
    )
    channel = insecure_channel(suite.crypto_target)
    return CryptoClient(
        channel=channel, identity=ServiceIdentity(name="auth", signer=signer)
    ), channel


async def _forwarded(suite: Suite) -> None:
    """Every security event of auth and apikeys has reached audit (none refused)."""
    query = (
        "SELECT count(*) FILTER (WHERE forwarded_at IS NULL AND rejected_at IS NULL),"
        " count(*) FILTER (WHERE rejected_at IS NOT NULL) FROM outbox_events"
    )
    async with asyncio.timeout(20):
        while True:
            auth = (await _rows(suite.auth_database_url, query))[0]
            keys = (await _rows(suite.apikeys_database_url, query))[0]
            assert (auth[1], keys[1]) == (0, 0), "audit refused an event"
            if auth[0] == keys[0] == 0:
                return
            await asyncio.sleep(0.1)


async def _until(check, *, within: float) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)


async def test_a_deleted_account_leaves_nothing_readable_and_nothing_that_works(
    suite: Suite,
) -> None:
    email = f"deleted-{uuid.uuid4().hex[:10]}@example.com"
    name = f"Zelda Quixote {uuid.uuid4().hex[:6]}"
    status, body, _ = await suite.json_call(
        "POST", "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": name}
    )
    assert status == 201, body
    user_id = body["userId"]
    token = _verification_token(await _mail(suite, email, VERIFY_SUBJECT))
    status, _, _ = await suite.json_call(
        "POST", "/v1/auth/email-verification/confirm", json={"token": token}
    )
    assert status == 204

    home = await suite.log_in(email)  # from 127.0.0.1, the network it signed up from
    access = home["accessToken"]
    status, created, _ = await suite.json_call(
        "POST",
        "/v1/api-keys",
        token=access,
        json={"name": "server", "type": "secret", "scopes": ["team:read"]},
    )
    assert status == 201, created
    key = created["key"]
    status, enrolment, _ = await suite.json_call("POST", "/v1/me/totp", token=access)
    assert status == 200, enrolment
    totp = pyotp.TOTP(enrolment["secret"])
    status, confirmed, _ = await suite.json_call(
        "POST", "/v1/me/totp/confirm", token=access, json={"code": totp.at(suite.clock.now())}
    )
    assert status == 200, confirmed
    suite.clock.advance(timedelta(seconds=31))

    async def signed_in(http: aiohttp.ClientSession) -> dict:
        pending = await log_in(suite, http, email)
        assert pending["mfaRequired"] is True
        async with http.post(
            suite.url("/v1/auth/login/mfa"),
            json={"mfaToken": pending["mfaToken"], "code": totp.at(suite.clock.now())},
        ) as response:
            tokens = await response.json()
            assert response.status == 200, tokens
        suite.clock.advance(timedelta(seconds=31))  # the next code is a fresh step's
        return dict(tokens)

    async with client_from("127.0.0.1") as here, client_from("127.0.0.2") as elsewhere:
        sessions = [await signed_in(here), await signed_in(elsewhere)]
    sessions.append(home)
    for tokens in sessions:
        assert (await suite.call("GET", "/v1/me", token=tokens["accessToken"]))[0] == 200
    assert (await suite.call("GET", "/v1/whoami", token=key))[0] == 200  # cached now
    before = await _ciphertexts(suite, user_id)
    assert len(before) >= 2 + 1 + 10

    # Deleting needs a recent login: the newest session's.
    status, _, _ = await suite.json_call("DELETE", "/v1/me", token=sessions[1]["accessToken"])
    assert status == 204

    # Every token and the key fail on their next request, at the gateway.
    async def tokens_refused() -> bool:
        answers = [(await suite.call("GET", "/v1/me", token=t["accessToken"]))[0] for t in sessions]
        return answers == [401] * len(sessions)

    async def key_refused() -> bool:
        return (await suite.call("GET", "/v1/whoami", token=key))[0] == 401

    await _until(tokens_refused, within=3.0)
    await _until(key_refused, within=5.0)
    for tokens in sessions:
        status, problem, _ = await suite.json_call(
            "POST", "/v1/auth/refresh", json={"refreshToken": tokens["refreshToken"]}
        )
        assert (status, problem["code"]) == (401, "session_revoked")
    status, problem, _ = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert (status, problem["code"]) == (401, "invalid_credentials")
    status, problem, _ = await suite.json_call("DELETE", "/v1/me", token=sessions[1]["accessToken"])
    assert status == 401

    # Every ciphertext of the person, wherever it was copied, is gone for good.
    crypto, channel = _crypto_as_auth(suite)
    try:
        for item in before:
            with pytest.raises(SubjectErased):
                await crypto.decrypt([item])
    finally:
        await channel.close(None)  # type: ignore[attr-defined]

    # The security log has every event, and still verifies.
    await _forwarded(suite)
    assert suite.data_dir is not None
    out = io.StringIO()
    assert (
        await verify(
            AuditSettings(data_dir=suite.data_dir, database_url=suite.audit_database_url),
            None,
            None,
            out,
        )
        == 0
    ), out.getvalue()
    [(subject, details)] = await _rows(
        suite.audit_database_url,
        "SELECT subject, details FROM events WHERE type = 'account.deleted'",
    )
    assert subject == f"user:{user_id}"

    # Nothing of the person is left: not in any service's database, nor in any file of the
    # suite's data directory (where the embedded default keeps its mail folder).
    pii = [email.encode(), name.encode(), b"Zelda Quixote"]
    dumps = {
        "auth": suite.auth_database_dump(),
        "apikeys": suite.apikeys_database_dump(),
        "audit": _audit_dump(suite),
    }
    for service, dump in dumps.items():
        for value in pii:
            assert value not in dump, (service, value)
        for ciphertext, _ in before:
            assert ciphertext not in dump, service
    assert b"127.0.0.2" not in dumps["auth"]  # where they signed in from
    for path in suite.data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for value in pii:
                assert value not in content, path
    assert details is not None
    assert email not in str(details)

    # The address signs up afresh, as a new person.
    status, again, _ = await suite.json_call(
        "POST", "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "New"}
    )
    assert status == 201
    assert again["userId"] != user_id
    fresh = await suite.log_in(email)
    status, me, _ = await suite.json_call("GET", "/v1/me", token=fresh["accessToken"])
    assert (status, me["userId"], me["email"]) == (200, again["userId"], email)


def _audit_dump(suite: Suite) -> bytes:
    from .conftest import database_dump

    return database_dump(suite.audit_database_url)


async def test_a_sole_owner_with_a_team_is_told_to_hand_it_over(suite: Suite) -> None:
    owner = f"owner-{uuid.uuid4().hex[:8]}@example.com"
    member = f"member-{uuid.uuid4().hex[:8]}@example.com"
    tokens = await suite.sign_up_and_log_in(owner)
    await suite.sign_up(member)
    member_id = suite.user_ids[member]
    status, me, _ = await suite.json_call("GET", "/v1/me", token=tokens["accessToken"])
    assert status == 200
    await _execute(
        suite.auth_database_url,
        "INSERT INTO memberships (workspace_id, user_id, role, created_at)"
        " VALUES (%s, %s, 'member', now())",
        me["workspaceId"],
        member_id,
    )
    status, problem, headers = await suite.json_call(
        "DELETE", "/v1/me", token=tokens["accessToken"]
    )
    assert (status, problem["code"]) == (409, "ownership_transfer_required")
    assert headers["Content-Type"].startswith("application/problem+json")
    assert member not in str(problem)
    assert member_id not in str(problem)
    assert (await suite.call("GET", "/v1/me", token=tokens["accessToken"]))[0] == 200
