"""Disabled accounts (issue 12 item 5, SECURITY.md 26, 45): no way in works, sessions and keys
end at once, enabling restores login, and the operator CLI's exit codes.

Real crypto, auth and apikeys gRPC servers on SQLite and Postgres; the operator's actions run
through AccountDisabling (what `palisade-auth users` calls) on the injectable clock, and once
through the real `palisade-auth` command in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pyotp
import pytest
from google.protobuf import json_format, struct_pb2
from softauthn import SoftAuthenticator
from sqlalchemy import func, select, text, update

from palisade.auth.accounts.disabling import AccountDisabling
from palisade.auth.accounts.disabling_cli import run_users_command
from palisade.auth.accounts.key_revocations import ACCOUNT_DISABLED
from palisade.auth.errors import AccountNotFound
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import MAGIC_LINK, MAGIC_LINK_TABLE
from palisade.auth.mail.outbox import mail_outbox
from palisade.auth.store import outbox, users
from palisade.common.caller import AssertionSigner
from palisade.common.crypto_client import CryptoClient
from palisade.common.edge_keys import KeySource
from palisade.common.errors import ERROR_CODE_METADATA_KEY
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade_api.auth.v1 import auth_pb2 as pb

from .test_key_revocation_support import (
    PASSWORD,
    USER_AGENT,
    Stack,
    database_factory,
    eventually,
    start_stack,
)

ORIGIN = "http://localhost:8080"
T = TypeVar("T")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    return database_factory(request, tmp_path)


@asynccontextmanager
async def running(tmp_path: Path, backend: Any) -> AsyncIterator[tuple[Stack, AccountDisabling]]:
    async with start_stack(tmp_path, backend) as stack:
        signer = AssertionSigner(
            keys=KeySource.from_master(stack.master, "auth"), clock=stack.clock, ttl_seconds=60
        )
        channel = insecure_channel(stack.crypto_target)
        stack.exits.push_async_callback(channel.close, None)
        crypto = CryptoClient(channel=channel, identity=ServiceIdentity(name="auth", signer=signer))
        disabling = AccountDisabling(
            store=stack.store(), crypto=crypto, sessions=stack.auth.sessions, clock=stack.clock
        )
        yield stack, disabling


def _email() -> str:
    return f"ada-{uuid.uuid4().hex[:10]}@example.com"


def _code_of(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(ERROR_CODE_METADATA_KEY)


async def _refused(call: Any, status: grpc.StatusCode, code: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert (caught.value.code(), _code_of(caught.value)) == (status, code), caught.value


async def _sign_up(stack: Stack, email: str) -> str:
    """A user whose address is verified (so every second factor may be enrolled)."""
    response = await stack.auth_stub.SignUp(
        pb.SignUpRequest(email=email, password=PASSWORD, name="Ada"), metadata=stack.anonymous()
    )
    async with stack.auth.engine.begin() as conn:
        await conn.execute(
            update(users)
            .where(users.c.id == response.user_id)
            .values(email_verified_at=stack.clock.now())
        )
    return response.user_id


async def _login(stack: Stack, email: str, password: str = PASSWORD) -> pb.TokenResponse:
    return await stack.auth_stub.Login(
        pb.LoginRequest(email=email, password=password), metadata=stack.anonymous()
    )


async def _validate(stack: Stack, access_token: str) -> pb.ValidateAccessTokenResponse:
    return await stack.auth_stub.ValidateAccessToken(
        pb.ValidateAccessTokenRequest(access_token=access_token), metadata=stack.gateway()
    )


def _as_user(stack: Stack, grant: pb.ValidateAccessTokenResponse) -> Any:
    return stack.auth_signing.marker(
        "gateway",
        principal=f"user:{grant.user_id}",
        workspace_id=grant.workspace_id,
        session_id=grant.session_id,
        client_ip="203.0.113.7",
        user_agent=USER_AGENT,
    )


async def _events(stack: Stack, event_type: str) -> list[str]:
    async with stack.auth.engine.connect() as conn:
        rows = await conn.execute(
            select(outbox.c.payload).where(outbox.c.event_type == event_type).order_by(outbox.c.id)
        )
        return [r.payload for r in rows]


async def _login_failures(stack: Stack, user_id: str) -> list[str]:
    reasons = []
    for raw in await _events(stack, "session.login_failed"):
        payload = json.loads(raw)
        if payload.get("subject") == user_id:
            reasons.append(payload["reason"])
    return reasons


# -- password --------------------------------------------------------------------------------


async def test_password_login_says_account_disabled_only_after_the_right_password(
    tmp_path, backend
) -> None:
    async with running(tmp_path, backend) as (stack, disabling):
        email = _email()
        user_id = await _sign_up(stack, email)
        result = await disabling.disable(email)
        assert (result.user_id, result.changed) == (user_id, True)

        await _refused(_login(stack, email), grpc.StatusCode.PERMISSION_DENIED, "account_disabled")
        # No oracle: without the password the answer is the one anyone gets.
        await _refused(
            _login(stack, email, "not the password at all"),
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid_credentials",
        )
        await _refused(
            _login(stack, "nobody-" + email),
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid_credentials",
        )
        assert await _login_failures(stack, user_id) == ["disabled", "bad_password"]

        assert (await disabling.enable(email)).changed
        tokens = await _login(stack, email)
        assert (await _validate(stack, tokens.access_token)).user_id == user_id


async def test_disable_and_enable_are_idempotent_and_recorded_once(tmp_path, backend) -> None:
    async with running(tmp_path, backend) as (stack, disabling):
        email = _email()
        user_id = await _sign_up(stack, email)
        assert (await disabling.enable(email)).changed is False  # not disabled: nothing to do
        assert (await disabling.disable(email)).changed is True
        again = await disabling.disable(email)
        assert (again.changed, again.sessions_ended) == (False, 0)
        assert (await disabling.enable(email)).changed is True
        assert (await disabling.enable(email)).changed is False
        [disabled] = [json.loads(e) for e in await _events(stack, "account.disabled")]
        [enabled] = [json.loads(e) for e in await _events(stack, "account.enabled")]
        for event in (disabled, enabled):
            assert event["actor"] == "operator:cli"
            assert event["subject"] == user_id
        with pytest.raises(AccountNotFound):
            await disabling.disable("nobody-" + email)


# -- sessions, refresh and the revocation feed ----------------------------------------------


async def test_disabling_ends_every_session_at_once_and_the_feed_carries_it(
    tmp_path, backend
) -> None:
    async with running(tmp_path, backend) as (stack, disabling):
        email = _email()
        user_id = await _sign_up(stack, email)
        sessions = [await _login(stack, email) for _ in range(3)]
        grants = [await _validate(stack, s.access_token) for s in sessions]

        heard: list[pb.Revocation] = []
        subscribed = asyncio.Event()

        async def follow() -> None:
            stream = stack.auth_stub.WatchRevocations(
                pb.WatchRevocationsRequest(), metadata=stack.gateway()
            )
            async for message in stream:
                subscribed.set()
                if not message.heartbeat:
                    heard.append(message)

        follower = asyncio.create_task(follow())
        try:
            await asyncio.wait_for(subscribed.wait(), 10)
            result = await disabling.disable(email)
            assert result.sessions_ended == 3

            # ValidateAccessToken refuses every one of them on the very next call.
            for tokens in sessions:
                await _refused(
                    _validate(stack, tokens.access_token),
                    grpc.StatusCode.UNAUTHENTICATED,
                    "session_revoked",
                )

            async def all_heard() -> bool:
                ended = {
                    sid for m in heard if m.reason == "account_disabled" for sid in m.session_ids
                }
                return ended == {g.session_id for g in grants}

            await eventually(all_heard)
            assert all(m.user_id == user_id for m in heard)
            assert sum(len(m.access_token_hashes) for m in heard) == 3
        finally:
            follower.cancel()
        # A refresh token proves it was the holder's: the answer says why it no longer works.
        await _refused(
            stack.auth_stub.Refresh(
                pb.RefreshRequest(refresh_token=sessions[0].refresh_token),
                metadata=stack.anonymous(),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "account_disabled",
        )
        await disabling.enable(email)
        # Enabling does not bring ended sessions back.
        await _refused(
            stack.auth_stub.Refresh(
                pb.RefreshRequest(refresh_token=sessions[1].refresh_token),
                metadata=stack.anonymous(),
            ),
            grpc.StatusCode.UNAUTHENTICATED,
            "session_revoked",
        )


async def test_a_login_racing_the_disable_leaves_no_live_session(tmp_path, backend) -> None:
    """Logins in flight while the account is disabled either end up refused or with a
    session the disable ended: never with a working one."""
    async with running(tmp_path, backend) as (stack, disabling):
        email = _email()
        await _sign_up(stack, email)

        async def attempt() -> pb.TokenResponse | str | None:
            try:
                return await _login(stack, email)
            except grpc.aio.AioRpcError as error:
                return _code_of(error)

        logins = [asyncio.create_task(attempt()) for _ in range(8)]
        await asyncio.sleep(0)  # let them start before the disable
        await disabling.disable(email)
        outcomes = await asyncio.gather(*logins)
        refusals = {o for o in outcomes if isinstance(o, str)}
        assert refusals <= {"account_disabled"}
        issued = [o for o in outcomes if isinstance(o, pb.TokenResponse)]
        for tokens in issued:
            await _refused(
                _validate(stack, tokens.access_token),
                grpc.StatusCode.UNAUTHENTICATED,
                "session_revoked",
            )
        async with stack.auth.engine.connect() as conn:
            live = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id"
                        " WHERE u.disabled_at IS NOT NULL AND s.revoked_at IS NULL"
                    )
                )
            ).scalar_one()
        assert live == 0


# -- API keys ---------------------------------------------------------------------------------


async def test_disabling_revokes_the_persons_keys_in_every_workspace(tmp_path, backend) -> None:
    async with running(tmp_path, backend) as (stack, disabling):
        email = _email()
        user_id = await _sign_up(stack, email)
        grant = await _validate(stack, (await _login(stack, email)).access_token)
        other_ws = f"ws_{uuid.uuid4().hex}"
        mine = [
            (await stack.create_key(user_id, grant.workspace_id)).api_key.id,
            (await stack.create_key(user_id, other_ws)).api_key.id,
        ]
        someone_elses = (await stack.create_key(f"usr_{uuid.uuid4().hex}", other_ws)).api_key.id

        await disabling.disable(email)

        async def revoked() -> bool:
            states = await stack.key_states(*mine)
            return set(states.values()) == {ACCOUNT_DISABLED}

        await eventually(revoked)  # the commit woke the relay; it polls once a minute here
        assert (await stack.key_states(someone_elses))[someone_elses] is None

        # A key made meanwhile through a gateway that still held a cached session (apikeys
        # takes the gateway's word): the second sweep, a minute later, revokes it too.
        late = (await stack.create_key(user_id, grant.workspace_id)).api_key.id

        async def only_the_sweep_left() -> bool:
            rows = await stack.pending_requests()
            return len(rows) == 1 and rows[0].attempts == 0

        await eventually(only_the_sweep_left)  # the first request's row goes once answered
        [sweep] = await stack.pending_requests()
        assert (sweep.reason, sweep.attempts) == (ACCOUNT_DISABLED, 0)
        relay = stack.auth.key_revocation_relay
        assert await relay.run_once() == 0  # not due yet
        stack.clock.advance(timedelta(seconds=61))
        assert await relay.run_once() == 1
        assert (await stack.key_states(late))[late] == ACCOUNT_DISABLED
        assert (await stack.key_states(someone_elses))[someone_elses] is None
        assert await stack.pending_requests() == []


# -- magic links -------------------------------------------------------------------------------


async def _issue_magic_link(stack: Stack, user_id: str) -> str:
    links = SingleUseTokens(table=MAGIC_LINK_TABLE, purpose=MAGIC_LINK, clock=stack.clock)
    token = links.new_token()
    async with stack.store().transaction() as tx:
        await links.issue(
            tx, token=token, user_id=user_id, lifetime=timedelta(minutes=15), retire_siblings=False
        )
    return token


async def _redeem(stack: Stack, token: str) -> pb.TokenResponse:
    return await stack.auth_stub.RedeemMagicLink(
        pb.RedeemMagicLinkRequest(token=token), metadata=stack.anonymous()
    )


async def _queued_mail(stack: Stack) -> int:
    async with stack.auth.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(mail_outbox))).scalar())


async def test_magic_links_die_with_the_disable_and_none_are_sent_after(tmp_path, backend) -> None:
    async with running(tmp_path, backend) as (stack, disabling):
        email = _email()
        user_id = await _sign_up(stack, email)
        sent_before = await _issue_magic_link(stack, user_id)
        await disabling.disable(email)
        await _refused(
            _redeem(stack, sent_before), grpc.StatusCode.UNAUTHENTICATED, "invalid_magic_link"
        )
        queued = await _queued_mail(stack)
        await stack.auth_stub.RequestMagicLink(
            pb.RequestMagicLinkRequest(email=email), metadata=stack.anonymous()
        )
        assert await _queued_mail(stack) == queued  # a disabled account is sent no link


async def test_a_valid_link_of_a_disabled_account_says_account_disabled(tmp_path, backend) -> None:
    """The race the disable's retirement cannot cover (a link that is valid while the account
    is disabled): the link verifies, then the answer is account_disabled, and it is recorded."""
    async with running(tmp_path, backend) as (stack, _disabling):
        user_id = await _sign_up(stack, _email())
        async with stack.auth.engine.begin() as conn:
            await conn.execute(
                update(users).where(users.c.id == user_id).values(disabled_at=stack.clock.now())
            )
        token = await _issue_magic_link(stack, user_id)
        await _refused(_redeem(stack, token), grpc.StatusCode.PERMISSION_DENIED, "account_disabled")
        reasons = [
            json.loads(e).get("reason") for e in await _events(stack, "session.login_failed")
        ]
        assert "magic_link_account_disabled" in reasons
        await _refused(
            _redeem(stack, "plsd_ml_" + "A" * 43),
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid_magic_link",
        )


# -- the MFA step -------------------------------------------------------------------------------


async def test_the_mfa_step_says_account_disabled_after_the_right_code(tmp_path, backend) -> None:
    async with running(tmp_path, backend) as (stack, disabling):
        email = _email()
        await _sign_up(stack, email)
        grant = await _validate(stack, (await _login(stack, email)).access_token)
        enrolment = await stack.auth_stub.StartTotpEnrollment(
            pb.StartTotpEnrollmentRequest(), metadata=_as_user(stack, grant)
        )
        totp = pyotp.TOTP(enrolment.secret)
        await stack.auth_stub.ConfirmTotp(
            pb.ConfirmTotpRequest(code=totp.at(stack.clock.now())), metadata=_as_user(stack, grant)
        )
        stack.clock.advance(timedelta(seconds=31))  # a fresh step: the next code is unused
        pending = await _login(stack, email)
        assert pending.mfa_required

        await disabling.disable(email)

        async def step(code: str) -> pb.TokenResponse:
            return await stack.auth_stub.LoginMfa(
                pb.LoginMfaRequest(mfa_token=pending.mfa_token, code=code),
                metadata=stack.anonymous(),
            )

        wrong = "000000" if totp.at(stack.clock.now()) != "000000" else "111111"
        await _refused(step(wrong), grpc.StatusCode.UNAUTHENTICATED, "invalid_mfa_code")
        right = totp.at(stack.clock.now())
        await _refused(step(right), grpc.StatusCode.PERMISSION_DENIED, "account_disabled")
        # Password first, for a disabled account with a second factor: refused before the step.
        await _refused(_login(stack, email), grpc.StatusCode.PERMISSION_DENIED, "account_disabled")


# -- passkeys ---------------------------------------------------------------------------------


def _struct(document: dict[str, Any]) -> struct_pb2.Struct:
    return json_format.ParseDict(document, struct_pb2.Struct())


async def test_a_passkey_login_says_account_disabled_after_the_assertion_verifies(
    tmp_path, backend
) -> None:
    async with running(tmp_path, backend) as (stack, disabling):
        email = _email()
        await _sign_up(stack, email)
        grant = await _validate(stack, (await _login(stack, email)).access_token)
        options = await stack.auth_stub.PasskeyRegistrationOptions(
            pb.PasskeyRegistrationOptionsRequest(), metadata=_as_user(stack, grant)
        )
        authenticator = SoftAuthenticator(origin=ORIGIN)
        created = authenticator.create(json_format.MessageToDict(options.public_key))
        await stack.auth_stub.RegisterPasskey(
            pb.RegisterPasskeyRequest(
                challenge_id=options.challenge_id, credential=_struct(created), name="Laptop"
            ),
            metadata=_as_user(stack, grant),
        )

        async def passkey_login(**knobs: Any) -> pb.TokenResponse:
            login = await stack.auth_stub.PasskeyLoginOptions(
                pb.PasskeyLoginOptionsRequest(), metadata=stack.anonymous()
            )
            assertion = authenticator.get(json_format.MessageToDict(login.public_key), **knobs)
            return await stack.auth_stub.PasskeyLogin(
                pb.PasskeyLoginRequest(
                    challenge_id=login.challenge_id, credential=_struct(assertion)
                ),
                metadata=stack.anonymous(),
            )

        assert (await passkey_login()).access_token  # it works before
        await disabling.disable(email)
        await _refused(passkey_login(), grpc.StatusCode.PERMISSION_DENIED, "account_disabled")
        await _refused(
            passkey_login(flip_signature_bit=True),
            grpc.StatusCode.UNAUTHENTICATED,
            "passkey_verification_failed",
        )
        await disabling.enable(email)
        assert (await passkey_login()).access_token


# -- the operator command ----------------------------------------------------------------------


async def _following_real_time(stack: Stack, work: Awaitable[T]) -> T:
    """The operator's command signs with real time; the services' ManualClock follows it
    while the command runs (never backwards)."""

    async def follow() -> None:
        while True:
            stack.clock.set(max(stack.clock.now(), datetime.now(UTC)))
            await asyncio.sleep(0.05)

    follower = asyncio.create_task(follow())
    try:
        return await work
    finally:
        follower.cancel()


async def _cli(stack: Stack, *args: str) -> tuple[int, str, str]:
    """`palisade-auth users ...` in its own process, configured like the running service."""
    settings = stack.extra["settings"]
    env = {
        **os.environ,
        "PALISADE_DATA_DIR": str(stack.data_dir),
        "PALISADE_AUTH_DATABASE_URL": settings.database_url,
        "PALISADE_AUTH_CRYPTO_TARGET": stack.crypto_target,
        "PALISADE_AUTH_LOG_LEVEL": "WARNING",
    }

    async def run() -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "palisade.auth",
            "users",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    return await _following_real_time(stack, run())


async def test_the_cli_disables_and_enables_and_says_when_it_cannot(tmp_path, backend) -> None:
    async with running(tmp_path, backend) as (stack, _disabling):
        email = _email()
        user_id = await _sign_up(stack, email)
        tokens = await _login(stack, email)

        # The real command, in its own process.
        status, out, err = await _cli(stack, "disable", "nobody-" + email)
        assert status == 1, err
        assert "no account has this email address" in err
        assert email not in out + err
        status, out, err = await _cli(stack, "disable", email.upper())
        assert status == 0, err
        assert out.startswith(f"{user_id} disabled: 1 session(s) ended")
        assert email not in out
        await _refused(_login(stack, email), grpc.StatusCode.PERMISSION_DENIED, "account_disabled")
        await _refused(
            _validate(stack, tokens.access_token),
            grpc.StatusCode.UNAUTHENTICATED,
            "session_revoked",
        )

        # The same command in this process (faster): the other answers.
        async def command(action: str, address: str) -> tuple[int, list[str], list[str]]:
            out_lines: list[str] = []
            err_lines: list[str] = []
            settings = stack.extra["settings"]
            status = await _following_real_time(
                stack,
                run_users_command(
                    settings, action, address, out=out_lines.append, err=err_lines.append
                ),
            )
            return status, out_lines, err_lines

        status, _, err_lines = await command("disable", "not an address")
        assert status == 1
        assert "not a valid email address" in err_lines[0]
        status, out_lines, _ = await command("disable", email)
        assert (status, out_lines[0].split(":")[0]) == (0, f"{user_id} was already disabled")
        status, out_lines, _ = await command("enable", email)
        assert (status, out_lines) == (0, [f"{user_id} enabled"])
        assert (await _login(stack, email)).access_token
        status, out_lines, _ = await command("enable", email)
        assert (status, out_lines) == (0, [f"{user_id} was not disabled"])
