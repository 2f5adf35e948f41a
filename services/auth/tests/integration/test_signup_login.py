"""Sign-up and password login through the real auth and crypto services."""

from __future__ import annotations

import grpc
import pytest

from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("palisade-error-code")


async def test_sign_up_log_in_and_read_profile(auth) -> None:
    created = await auth.sign_up("Ada@Example.com")
    assert created.user_id.startswith("usr_")
    assert created.workspace_id.startswith("ws_")
    tokens = await auth.login("ada@example.com")
    assert tokens.access_token.startswith("plsd_at_")
    assert tokens.refresh_token.startswith("plsd_rt_")
    assert tokens.expires_in == 3600
    assert tokens.token_type == "Bearer"
    grant = await auth.validate(tokens.access_token)
    assert (grant.user_id, grant.workspace_id, grant.role) == (
        created.user_id,
        created.workspace_id,
        "owner",
    )
    me = await auth.stub.GetMe(pb.GetMeRequest(), metadata=auth.as_user(grant))
    assert (me.email, me.name, me.role) == ("ada@example.com", "Ada Lovelace", "owner")


async def test_database_holds_no_plaintext_pii_or_tokens(auth) -> None:
    await auth.sign_up("grace.hopper@example.com", name="Grace Hopper")
    tokens = await auth.login("grace.hopper@example.com")
    with auth.db() as conn:
        dump = "".join(
            str(row)
            for table in (
                "users",
                "sessions",
                "refresh_tokens",
                "access_tokens",
                "outbox_events",
                "workspaces",
            )
            for row in conn.execute(f"SELECT * FROM {table}").fetchall()
        )
    for secret in (
        "grace.hopper",
        "Grace Hopper",
        "correct horse",
        tokens.access_token,
        tokens.refresh_token,
        tokens.access_token[8:],
        tokens.refresh_token[8:],
    ):
        assert secret not in dump
    with auth.db() as conn:
        [stored] = conn.execute("SELECT password_hash FROM users").fetchone()
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


async def test_unknown_email_and_wrong_password_answer_identically(auth) -> None:
    await auth.sign_up("known@example.com")
    answers = []
    for email, password in [
        ("known@example.com", "wrong password!!"),
        ("unknown@example.com", "wrong password!!"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth.login(email, password)
        error = caught.value
        answers.append((error.code(), error.details(), _code(error)))
    assert answers[0] == answers[1]
    assert answers[0][0] == grpc.StatusCode.UNAUTHENTICATED
    assert answers[0][2] == "invalid_credentials"
    reasons = [p for p in auth.events("session.login_failed")]
    assert '"reason": "bad_password"' in reasons[0]
    assert '"reason": "unknown_user"' in reasons[1]


async def test_sign_up_with_a_taken_email_looks_like_success(auth) -> None:
    first = await auth.sign_up("taken@example.com")
    second = await auth.sign_up("TAKEN@example.com", password="another good passphrase")
    assert second.user_id != first.user_id
    assert second.user_id.startswith("usr_")
    assert second.workspace_id.startswith("ws_")
    # ...but nothing was created and the original password still works.
    with auth.db() as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
    await auth.login("taken@example.com")
    assert len(auth.events("user.signup_existing_email")) == 1


@pytest.mark.parametrize(
    ("email", "password", "code"),
    [
        ("not-an-email", "a fine passphrase", "invalid_email"),
        ("a@b", "a fine passphrase", "invalid_email"),
        ("x@example.com", "short", "password_too_short"),
        ("x@example.com", "", "password_too_short"),
        ("x@example.com", "password1", "password_too_common"),
        ("x@example.com", "p" * 1025, "password_too_long"),
        ("x@example.com", "x" * 1_000_000, "password_too_long"),
        ("longname@example.com", "longname@example.com", "password_too_common"),
    ],
)
async def test_sign_up_refuses_bad_input_with_distinct_codes(auth, email, password, code) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.sign_up(email, password)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(caught.value) == code


async def test_long_unicode_passwords_are_not_truncated(auth) -> None:
    base = "ü" * 40  # 80 bytes in UTF-8: past bcrypt's 72-byte limit
    await auth.sign_up("unicode@example.com", password=base + "A")
    await auth.login("unicode@example.com", base + "A")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.login("unicode@example.com", base + "B")
    assert _code(caught.value) == "invalid_credentials"
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # no case folding either
        await auth.login("unicode@example.com", base.upper() + "A")
    assert _code(caught.value) == "invalid_credentials"


async def test_login_input_errors_do_not_reveal_accounts(auth) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.login("nope", "whatever")
    assert _code(caught.value) == "invalid_email"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.login("someone@example.com", "x" * 1_000_000)
    assert _code(caught.value) == "password_too_long"


async def test_known_and_unknown_emails_cost_the_same_hashing_work(auth, monkeypatch) -> None:
    """Timing parity without timing: both paths run exactly one Argon2 computation."""
    from palisade.auth.passwords.hashing import PasswordHasher

    calls: list[str] = []
    real_verify, real_hash = PasswordHasher._verify, PasswordHasher.hash

    def counting_verify(self, stored, password):
        calls.append("verify")
        return real_verify(self, stored, password)

    async def counting_hash(self, password):
        calls.append("hash")
        return await real_hash(self, password)

    monkeypatch.setattr(PasswordHasher, "_verify", counting_verify)
    monkeypatch.setattr(PasswordHasher, "hash", counting_hash)
    await auth.sign_up("exists@example.com")
    work = {}
    for label, email in [("known", "exists@example.com"), ("unknown", "absent@example.com")]:
        calls.clear()
        with pytest.raises(grpc.aio.AioRpcError):
            await auth.login(email, "wrong password here")
        work[f"login {label}"] = list(calls)
        calls.clear()
        await auth.sign_up(email, password="a different passphrase")
        work[f"signup {label}"] = list(calls)
    assert work["login known"] == work["login unknown"] == ["verify"]
    assert work["signup known"] == work["signup unknown"] == ["hash"]
