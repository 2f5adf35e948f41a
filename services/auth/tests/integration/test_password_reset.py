"""Password reset over real gRPC (PasswordResetService), on SQLite and on real Postgres, with
the reset email delivered by the relay to a real SMTP catcher (SECURITY.md 1-2, 16, 42).

Time moves on the injectable clock, never by sleeping; the race runs 20 parallel
confirmations of one token and expects exactly one winner.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import psycopg
import pyotp
import pytest
from smtp_catcher import SmtpCatcher, serve_smtp_catcher
from sqlalchemy import event
from sqlalchemy.engine import make_url

from palisade.common.caller import current_caller
from palisade_api.auth.v1 import auth_pb2 as pb
from palisade_api.auth.v1 import password_reset_pb2 as rpb
from palisade_api.auth.v1 import password_reset_pb2_grpc

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

OLD = "correct horse battery staple"
NEW = "a freshly chosen passphrase"
_TOKEN = re.compile(r"/auth/reset-password\?token=(plsd_pr_[A-Za-z0-9_-]{43})\b")
RESET_SUBJECT = "Reset your Palisade password"
NOTICE_SUBJECT = "Your Palisade password was reset"
RESET_TOKENS = "SELECT count(*) FROM account_tokens WHERE purpose = 'password_reset'"
PENDING_MAIL = "SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL AND failed_at IS NULL"
RESET_SERVICE = "/palisade.auth.v1.PasswordResetService/"


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("palisade-error-code")


@pytest.fixture(params=["sqlite", "postgres"])
def postgres_url(request, postgres_database_factory, tmp_path) -> str:
    """Overrides the auth database that auth_factory uses: once per backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'auth-reset.db'}"
    return postgres_database_factory()


@dataclass
class Resets:
    auth: Any  # conftest.AuthHarness
    mail: SmtpCatcher
    url: str
    # On a channel of the harness's signer: each call is signed for the method it is sent to.
    stub: password_reset_pb2_grpc.PasswordResetServiceStub

    async def sql(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        """A query on the auth database, either backend (`?` placeholders). On a thread: the
        servers share this event loop, and SQLite's lock may be theirs for a moment."""
        return await asyncio.to_thread(self._sql, query, *args)

    def _sql(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        if self.url.startswith("sqlite"):
            path = self.url.split("///", 1)[1]
            with sqlite3.connect(path, timeout=10) as conn:
                return conn.execute(query, args).fetchall()
        pg = make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(pg, autocommit=True) as conn:
            cursor = conn.execute(query.replace("?", "%s"), args)
            return cursor.fetchall() if cursor.description is not None else []

    async def count(self, query: str, *args: object) -> int:
        return int((await self.sql(query, *args))[0][0])

    async def events(self, event_type: str) -> list[str]:
        rows = await self.sql(
            "SELECT payload FROM outbox_events WHERE event_type = ? ORDER BY id", event_type
        )
        return [str(r[0]) for r in rows]

    async def request(
        self, email: str, ip: str = "203.0.113.7"
    ) -> rpb.RequestPasswordResetResponse:
        return await self.stub.RequestPasswordReset(
            rpb.RequestPasswordResetRequest(email=email), metadata=self.auth.anonymous(ip)
        )

    async def confirm(
        self,
        token: str,
        password: str = NEW,
        *,
        code: str = "",
        backup_code: str = "",
        ip: str = "203.0.113.7",
    ) -> rpb.ConfirmPasswordResetResponse:
        return await self.stub.ConfirmPasswordReset(
            rpb.ConfirmPasswordResetRequest(
                token=token, new_password=password, code=code, backup_code=backup_code
            ),
            metadata=self.auth.anonymous(ip),
        )

    async def delivered(self, email: str, subject: str, nth: int = 1) -> Any:
        """The nth message with this subject to `email`, once the relay delivered it."""
        async with asyncio.timeout(10):
            while True:
                found = [m for m in self.mail.to(email) if m["Subject"] == subject]
                if len(found) >= nth:
                    return found[nth - 1]
                self.mail.arrived.clear()
                await self.mail.arrived.wait()

    async def emailed_token(self, email: str, nth: int = 1) -> str:
        """The reset token of the nth reset email to `email`."""
        message = await self.delivered(email, RESET_SUBJECT, nth)
        match = _TOKEN.search(_text(message))
        assert match is not None, _text(message)
        return match.group(1)

    async def requested_token(self, email: str, nth: int = 1) -> str:
        await self.request(email)
        return await self.emailed_token(email, nth)

    async def mail_settled(self) -> None:
        """Every queued email has been relayed (sent or given up on). The background relay
        may hold some under its lease, mid-send, where run_once() skips them: wait for it."""
        async with asyncio.timeout(15):
            while True:
                await self.auth.servers[0].mail_relay.run_once()
                if not await self.count(PENDING_MAIL):
                    return
                self.mail.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self.mail.arrived.wait()

    def reset_mails(self, email: str) -> int:
        return sum(m["Subject"] == RESET_SUBJECT for m in self.mail.to(email))


def _text(message: Any) -> str:
    body = message.get_body(preferencelist=("plain",))
    return str(body.get_content()) if body is not None else ""


@pytest.fixture
def resets_factory(
    auth_factory, postgres_url: str
) -> Callable[..., AbstractAsyncContextManager[Resets]]:
    def start(**overrides: object) -> AbstractAsyncContextManager[Resets]:
        @asynccontextmanager
        async def running() -> AsyncIterator[Resets]:
            async with (
                serve_smtp_catcher() as (catcher, port),
                auth_factory(
                    smtp_host="127.0.0.1", smtp_port=port, smtp_security="none", **overrides
                ) as auth,
                auth.signing.channel(auth.servers[0].running.target) as channel,
            ):
                stub = password_reset_pb2_grpc.PasswordResetServiceStub(channel)
                yield Resets(auth, catcher, postgres_url, stub)

        return running()

    return start


@pytest.fixture
async def resets(resets_factory) -> AsyncIterator[Resets]:
    async with resets_factory() as harness:
        yield harness


async def _signed_up(resets: Resets, email: str, *, verified: bool = False) -> pb.TokenResponse:
    """A new account (its address unverified unless `verified`), logged in once."""
    answer = await resets.auth.stub.SignUp(
        pb.SignUpRequest(email=email, password=OLD, name="Ada Lovelace"),
        metadata=resets.auth.anonymous(),
    )
    if verified:  # as an emailed link would; before the login, whose session it would end
        await resets.sql(
            "UPDATE users SET email_verified_at = password_changed_at WHERE id = ?",
            answer.user_id,
        )
    return await resets.auth.login(email, OLD)


async def _refused(call: Any) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), _code(caught.value)


async def _password_unchanged(resets: Resets, email: str) -> None:
    await resets.auth.login(email, OLD, ip="198.51.100.77")


# -- the whole reset ----------------------------------------------------------------------------


async def test_a_reset_sets_the_password_and_ends_every_session(resets: Resets) -> None:
    auth = resets.auth
    email = "reset@example.com"
    first = await _signed_up(resets, email)
    second = await auth.login(email, OLD, ip="198.51.100.2")
    grant = await auth.validate(first.access_token)
    token = await resets.requested_token(email)
    assert token.startswith("plsd_pr_")

    answer = await resets.confirm(token)
    assert answer == rpb.ConfirmPasswordResetResponse()  # nothing returned: no tokens

    for session in (first, second):
        code, error = await _refused(auth.validate(session.access_token))
        assert (code, error) == (grpc.StatusCode.UNAUTHENTICATED, "session_revoked")
        code, _ = await _refused(auth.refresh(session.refresh_token))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    code, error = await _refused(auth.login(email, OLD))
    assert error == "invalid_credentials"
    fresh = await auth.login(email, NEW, ip="198.51.100.3")
    me = await auth.stub.GetMe(
        pb.GetMeRequest(), metadata=auth.as_user(await auth.validate(fresh.access_token))
    )
    assert me.email_verified  # the emailed link reached the address's owner
    [(changed_at, verified_at)] = await resets.sql(
        "SELECT password_changed_at, email_verified_at FROM users WHERE id = ?", grant.user_id
    )
    assert changed_at is not None
    assert verified_at is not None
    hashes = await resets.sql("SELECT password_hash FROM users WHERE id = ?", grant.user_id)
    assert str(hashes[0][0]).startswith("$argon2id$v=19$")
    assert len(await resets.events("password.reset")) == 1
    requested = await resets.events("password.reset_requested")
    assert len(requested) == 1
    assert '"outcome": "success"' in requested[0]
    # The security notice, to the account's address, carrying no secret.
    notice = await resets.delivered(email, NOTICE_SUBJECT)
    assert NEW not in _text(notice)
    assert token not in _text(notice)

    code, error = await _refused(resets.confirm(token, "yet another passphrase"))
    assert error == "invalid_reset_token"  # used up


async def test_twenty_parallel_confirmations_have_one_winner(resets: Resets) -> None:
    email = "race@example.com"
    await _signed_up(resets, email)
    token = await resets.requested_token(email)
    results = await asyncio.gather(
        *(resets.confirm(token, f"racing passphrase number {i}") for i in range(20)),
        return_exceptions=True,
    )
    winners = [i for i, r in enumerate(results) if isinstance(r, rpb.ConfirmPasswordResetResponse)]
    assert len(winners) == 1, results
    for result in results:
        if not isinstance(result, rpb.ConfirmPasswordResetResponse):
            assert isinstance(result, grpc.aio.AioRpcError), result
            assert _code(result) == "invalid_reset_token"
    await resets.auth.login(email, f"racing passphrase number {winners[0]}")
    assert len(await resets.events("password.reset")) == 1


async def test_logins_racing_a_reset_leave_no_old_password_session(resets: Resets) -> None:
    """Whatever the interleaving, a session made with the old password while the reset runs
    is ended by it, and no re-hash of the old password survives."""
    auth = resets.auth
    for round_ in range(3):
        email = f"racing-logins{round_}@example.com"
        await _signed_up(resets, email)
        token = await resets.requested_token(email)
        logins = [auth.login(email, OLD, ip=f"198.51.100.{i + 1}") for i in range(6)]
        reset, *results = await asyncio.gather(
            resets.confirm(token), *logins, return_exceptions=True
        )
        assert reset == rpb.ConfirmPasswordResetResponse(), reset
        for result in results:
            if isinstance(result, grpc.aio.AioRpcError):
                assert _code(result) == "invalid_credentials"
                continue
            assert isinstance(result, pb.TokenResponse), result
            _, error = await _refused(auth.validate(result.access_token))
            assert error == "session_revoked"  # it won the race: the reset ended it
        _, error = await _refused(auth.login(email, OLD, ip="198.51.100.200"))
        assert error == "invalid_credentials"
        await auth.login(email, NEW, ip="198.51.100.201")


async def test_a_link_works_for_thirty_minutes(resets: Resets) -> None:
    email = "expiry@example.com"
    await _signed_up(resets, email)
    token = await resets.requested_token(email)
    resets.auth.clock.advance(timedelta(minutes=30))
    code, error = await _refused(resets.confirm(token))
    assert (code, error) == (grpc.StatusCode.UNAUTHENTICATED, "reset_token_expired")
    await _password_unchanged(resets, email)

    token = await resets.requested_token(email, nth=2)
    resets.auth.clock.advance(timedelta(minutes=29, seconds=59))
    await resets.confirm(token)
    await resets.auth.login(email, NEW)


async def test_a_newer_link_voids_the_older_one(resets: Resets) -> None:
    email = "newer@example.com"
    await _signed_up(resets, email)
    older = await resets.requested_token(email)
    newer = await resets.requested_token(email, nth=2)
    assert older != newer
    _, error = await _refused(resets.confirm(older))
    assert error == "invalid_reset_token"
    await resets.confirm(newer)


async def test_bad_tokens_get_stable_codes_and_change_nothing(resets: Resets) -> None:
    email = "bad@example.com"
    await _signed_up(resets, email)
    token = await resets.requested_token(email)
    magic = "plsd_ml_" + token[len("plsd_pr_") :]
    cases = {
        token[:-1]: "invalid_token",  # truncated
        token + "A": "invalid_token",
        "": "invalid_token",
        magic: "wrong_token_type",  # a magic-link token in the reset form
        "plsd_rt_" + "A" * 43: "wrong_token_type",
        "plsd_pr_" + "A" * 43: "invalid_reset_token",  # well-formed, never issued
    }
    for bad, expected in cases.items():
        code, error = await _refused(resets.confirm(bad))
        assert (code, error) == (grpc.StatusCode.UNAUTHENTICATED, expected), bad
    await _password_unchanged(resets, email)
    assert await resets.count(RESET_TOKENS + " AND consumed_at IS NOT NULL") == 0
    assert len(await resets.events("password.reset_failed")) == len(cases)
    await resets.confirm(token)  # none of it used the real token up


async def test_a_weak_password_uses_nothing_up(resets: Resets) -> None:
    email = "weakling@example.com"
    await _signed_up(resets, email)
    token = await resets.requested_token(email)
    for weak, expected in (
        ("short", "password_too_short"),
        ("password1", "password_too_common"),
        ("weakling", "password_too_common"),  # the email's local part
        ("x" * 1025, "password_too_long"),
    ):
        code, error = await _refused(resets.confirm(token, weak))
        assert (code, error) == (grpc.StatusCode.INVALID_ARGUMENT, expected)
    await _password_unchanged(resets, email)
    await resets.confirm(token)
    await resets.auth.login(email, NEW)


async def test_a_reset_retires_the_users_other_links(resets: Resets) -> None:
    email = "links@example.com"
    await _signed_up(resets, email)
    await resets.auth.stub.RequestMagicLink(
        pb.RequestMagicLinkRequest(email=email), metadata=resets.auth.anonymous()
    )
    assert await resets.count("SELECT count(*) FROM magic_links WHERE used_at IS NULL") == 1
    token = await resets.requested_token(email)
    await resets.confirm(token)
    assert await resets.count("SELECT count(*) FROM magic_links WHERE used_at IS NULL") == 0
    assert await resets.count("SELECT count(*) FROM account_tokens WHERE consumed_at IS NULL") == 0


# -- the second factor --------------------------------------------------------------------------


async def _with_totp(resets: Resets, email: str) -> tuple[str, list[str], pb.TokenResponse]:
    auth = resets.auth
    session = await _signed_up(resets, email, verified=True)
    grant = await auth.validate(session.access_token)
    enrolment = await auth.stub.StartTotpEnrollment(
        pb.StartTotpEnrollmentRequest(), metadata=auth.as_user(grant)
    )
    codes = await auth.stub.ConfirmTotp(
        pb.ConfirmTotpRequest(code=pyotp.TOTP(enrolment.secret).at(auth.clock.now())),
        metadata=auth.as_user(grant),
    )
    auth.clock.advance(30)  # the enrolment's code is used; the next step's is fresh
    return enrolment.secret, list(codes.backup_codes), session


async def test_without_the_second_factor_a_reset_yields_nothing(resets: Resets) -> None:
    email = "two-step@example.com"
    secret, _, session = await _with_totp(resets, email)
    token = await resets.requested_token(email)
    for _ in range(2):
        answer = await resets.confirm(token)
        assert answer.mfa_required
        assert list(answer.methods) == ["totp", "backup_code"]
        assert answer.mfa_token == ""  # nothing that could be traded for a session
    await resets.auth.validate(session.access_token)  # sessions untouched
    await _password_unchanged(resets, email)
    assert await resets.count(RESET_TOKENS + " AND consumed_at IS NOT NULL") == 0

    _, error = await _refused(resets.confirm(token, code="000000"))
    assert error == "invalid_mfa_code"
    await _password_unchanged(resets, email)

    code_now = pyotp.TOTP(secret).at(resets.auth.clock.now())
    assert await resets.confirm(token, code=code_now) == rpb.ConfirmPasswordResetResponse()
    _, error = await _refused(resets.auth.validate(session.access_token))
    assert error == "session_revoked"
    # The password is new, and a login still needs the second factor.
    login = await resets.auth.login(email, NEW)
    assert login.mfa_required
    assert not login.access_token


async def test_a_backup_code_completes_a_reset_once(resets: Resets) -> None:
    email = "backup@example.com"
    _, backup_codes, _ = await _with_totp(resets, email)
    token = await resets.requested_token(email)
    await resets.confirm(token, backup_code=backup_codes[0])
    second = await resets.requested_token(email, nth=2)
    _, error = await _refused(
        resets.confirm(second, "another new passphrase", backup_code=backup_codes[0])
    )
    assert error == "invalid_mfa_code"  # used up by the first reset
    await resets.confirm(second, "another new passphrase", backup_code=backup_codes[1])


async def test_both_codes_at_once_are_refused(resets: Resets) -> None:
    email = "both@example.com"
    _, backup_codes, _ = await _with_totp(resets, email)
    token = await resets.requested_token(email)
    code, error = await _refused(resets.confirm(token, code="123456", backup_code=backup_codes[0]))
    assert (code, error) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_mfa_input")


async def test_wrong_codes_are_throttled_like_login(resets_factory) -> None:
    async with resets_factory(mfa_failures=3) as resets:
        email = "guesser@example.com"
        secret, _, _ = await _with_totp(resets, email)
        token = await resets.requested_token(email)
        for _ in range(3):
            _, error = await _refused(resets.confirm(token, code="000000"))
            assert error == "invalid_mfa_code"
        right = pyotp.TOTP(secret).at(resets.auth.clock.now())
        code, error = await _refused(resets.confirm(token, code=right))
        assert (code, error) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited")
        # The same counter as login's second step.
        login = await resets.auth.login(email, OLD)
        code, error = await _refused(
            resets.auth.stub.LoginMfa(
                pb.LoginMfaRequest(mfa_token=login.mfa_token, code=right),
                metadata=resets.auth.anonymous(),
            )
        )
        assert error == "rate_limited"


# -- requests: no enumeration, limits, disabled accounts ----------------------------------------


async def test_disabled_accounts_get_no_email_and_their_links_stop(resets: Resets) -> None:
    email = "disabled@example.com"
    await _signed_up(resets, email)
    token = await resets.requested_token(email)
    await resets.sql("UPDATE users SET disabled_at = password_changed_at")
    assert await resets.request(email) == rpb.RequestPasswordResetResponse()
    await resets.mail_settled()
    assert resets.reset_mails(email) == 1  # only the one sent before
    code, error = await _refused(resets.confirm(token))
    assert (code, error) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_reset_token")
    reasons = [e for e in await resets.events("password.reset_requested") if '"disabled"' in e]
    assert len(reasons) == 1


@dataclass
class Work:
    """What one RPC sent the database (verb and table, in order) and the crypto service."""

    statements: list[str] = field(default_factory=list)
    crypto: list[str] = field(default_factory=list)


_TABLE = re.compile(r"\b(?:INTO|UPDATE|FROM)\s+\"?(\w+)\"?", re.I)


def _shape(statement: str) -> str:
    verb = statement.split(None, 1)[0].upper()
    match = _TABLE.search(statement)
    return f"{verb} {match.group(1) if match else '?'}"


@pytest.fixture
def work(resets: Resets) -> Iterator[dict[str, Work]]:
    """Spies on the work of each RequestPasswordReset call (by its assertion id)."""
    seen: dict[str, Work] = {}
    server = resets.auth.servers[0]

    def current() -> Work | None:
        caller = current_caller.get()
        if caller is None or not caller.method.startswith(RESET_SERVICE):
            return None
        return seen.setdefault(caller.assertion_id, Work())

    def on_statement(conn: Any, cursor: Any, statement: str, *_: object) -> None:
        spied = current()
        if spied is not None:
            spied.statements.append(_shape(statement))

    class CountingStub:
        def __init__(self, stub: Any) -> None:
            self._stub = stub

        def __getattr__(self, name: str) -> Any:
            target = getattr(self._stub, name)

            def call(*args: object, **kwargs: object) -> object:
                spied = current()
                if spied is not None:
                    spied.crypto.append(name)
                return target(*args, **kwargs)

            return call

    engine = server.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_statement)
    crypto = server.sessions._crypto
    original = crypto._stub
    crypto._stub = CountingStub(original)
    try:
        yield seen
    finally:
        crypto._stub = original
        event.remove(engine, "before_cursor_execute", on_statement)


async def test_known_unknown_and_disabled_emails_do_the_same_work(
    resets: Resets, work: dict[str, Work]
) -> None:
    await _signed_up(resets, "known@example.com")
    off = await resets.auth.stub.SignUp(
        pb.SignUpRequest(email="off@example.com", password=OLD, name="Off"),
        metadata=resets.auth.anonymous(),
    )
    await resets.sql("UPDATE users SET disabled_at = password_changed_at WHERE id = ?", off.user_id)
    answers = []
    # The known email four times from one client: the fourth is over its per-(email, client)
    # limit (3), so nothing is sent for it either.
    asked = ["known@example.com", "nobody@example.com", "off@example.com"]
    asked += ["known@example.com"] * 3
    known: Work | None = None
    for email in asked:
        work.clear()
        answers.append(await resets.request(email, ip="198.51.100.9"))
        [done] = work.values()
        known = known or done
        assert done == known, (email, done, known)
    assert answers == [rpb.RequestPasswordResetResponse()] * len(asked)
    assert known is not None
    assert known.crypto == ["BlindIndex", "Encrypt"]
    # Transactions alike too (BEGIN IMMEDIATE on SQLite; psycopg's BEGIN is no statement).
    assert [s for s in known.statements if not s.startswith(("BEGIN", "COMMIT"))] == [
        "SELECT users",
        "UPDATE account_tokens",
        "INSERT account_tokens",
        "INSERT mail_outbox",
        "INSERT outbox_events",
    ]
    await resets.mail_settled()
    assert resets.reset_mails("known@example.com") == 3
    assert resets.mail.to("nobody@example.com") == []
    assert resets.reset_mails("off@example.com") == 0
    assert await resets.count(RESET_TOKENS) == 3
    events = await resets.events("password.reset_requested")
    for reason in ("unknown_user", "disabled", "throttled"):
        assert len([e for e in events if f'"{reason}"' in e]) == 1, reason


async def test_requests_over_the_email_limits_answer_alike_and_send_nothing(
    resets_factory,
) -> None:
    async with resets_factory(
        password_reset_email_ip_requests=2, password_reset_email_requests=3
    ) as resets:
        email = "limited@example.com"
        await _signed_up(resets, email)
        stranger = "198.51.100.40"  # not the client that signed in (that one is exempt)
        for _ in range(2):
            await resets.request(email, ip=stranger)
        await resets.emailed_token(email, nth=2)
        # Over the per-(email, client) limit: the usual answer, no email, no token.
        assert await resets.request(email, ip=stranger) == rpb.RequestPasswordResetResponse()
        # Another client: within its own allowance, up to the per-email cap.
        await resets.request(email, ip="198.51.100.50")
        await resets.emailed_token(email, nth=3)
        answer = await resets.request(email, ip="198.51.100.51")
        assert answer == rpb.RequestPasswordResetResponse()
        await resets.mail_settled()
        assert resets.reset_mails(email) == 3
        assert await resets.count(RESET_TOKENS) == 3
        throttled = [e for e in await resets.events("password.reset_requested") if "throttled" in e]
        assert len(throttled) == 2
        # The client that signed in to the account before is not held back by the email cap.
        await resets.request(email)
        await resets.emailed_token(email, nth=4)
        resets.auth.clock.advance(timedelta(minutes=15, seconds=1))
        await resets.request(email, ip=stranger)
        await resets.emailed_token(email, nth=5)


async def test_requests_over_the_client_limit_are_429(resets_factory) -> None:
    async with resets_factory(password_reset_ip_requests=3) as resets:
        for i in range(3):
            await resets.request(f"someone{i}@example.com")
        code, error = await _refused(resets.request("someone-else@example.com"))
        assert (code, error) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited")
        await resets.request("someone-else@example.com", ip="198.51.100.60")  # another client


async def test_a_malformed_email_is_refused(resets: Resets) -> None:
    code, error = await _refused(resets.request("not an email"))
    assert (code, error) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_email")
