"""Account deletion (issue 13 item 7): DELETE /v1/me as the auth service answers it.

Real crypto, auth and apikeys gRPC servers on SQLite and Postgres (deletion_support.py): the
sole-owner rule, recent authentication, every token, link, factor and key failing afterwards,
the address signing up afresh as a new user, parallel deletes, and crypto down at the moment
of deletion (the shred waits, nothing personal is readable in auth's rows meanwhile).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pyotp
import pytest
from google.protobuf import json_format, struct_pb2
from softauthn import SoftAuthenticator
from sqlalchemy import func, insert, select, text

from palisade.auth.accounts.erasure import DELETED_EMAIL_INDEX_PREFIX
from palisade.auth.accounts.key_revocations import ACCOUNT_DELETED
from palisade.auth.accounts.subject_shreds import subject_shred_requests
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import (
    ACCOUNT_TOKENS,
    EMAIL_VERIFICATION,
    MAGIC_LINK,
    MAGIC_LINK_TABLE,
    PASSWORD_RESET,
    magic_links,
)
from palisade.auth.mail.message import OutgoingEmail
from palisade.auth.mail.outbox import mail_outbox
from palisade.auth.mfa.store import backup_codes, totp_credentials
from palisade.auth.passwords.hashing import UNUSABLE_PASSWORD_HASH
from palisade.auth.store import memberships, users, workspaces
from palisade.auth.subjects import under_subject
from palisade.common.aad import associated_data
from palisade.common.crypto_client import SubjectErased
from palisade_api.auth.v1 import (
    account_pb2,
    account_pb2_grpc,
    password_reset_pb2,
    password_reset_pb2_grpc,
    team_pb2,
)
from palisade_api.auth.v1 import auth_pb2 as pb

from .deletion_support import PASSWORD, Person, World, refusal, start_world
from .test_key_revocation_support import database_factory, eventually

ORIGIN = "http://localhost:8080"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    return database_factory(request, tmp_path)


def _struct(document: dict[str, Any]) -> struct_pb2.Struct:
    return json_format.ParseDict(document, struct_pb2.Struct())


async def _user_row(world: World, user_id: str) -> Any:
    async with world.engine.connect() as conn:
        return (await conn.execute(select(users).where(users.c.id == user_id))).one()


async def _count(world: World, table: Any, *where: Any) -> int:
    async with world.engine.connect() as conn:
        query = select(func.count()).select_from(table).where(*where)
        return int((await conn.execute(query)).scalar_one())


async def _issue(world: World, tokens: SingleUseTokens, user_id: str) -> str:
    token = tokens.new_token()
    async with world.store().transaction() as tx:
        await tokens.issue(
            tx, token=token, user_id=user_id, lifetime=timedelta(minutes=15), retire_siblings=False
        )
    return token


async def _register_passkey(world: World, person: Person) -> SoftAuthenticator:
    options = await world.auth_stub.PasskeyRegistrationOptions(
        pb.PasskeyRegistrationOptionsRequest(), metadata=world.as_user(person.grant)
    )
    authenticator = SoftAuthenticator(origin=ORIGIN)
    created = authenticator.create(json_format.MessageToDict(options.public_key))
    await world.auth_stub.RegisterPasskey(
        pb.RegisterPasskeyRequest(
            challenge_id=options.challenge_id, credential=_struct(created), name="Laptop"
        ),
        metadata=world.as_user(person.grant),
    )
    return authenticator


async def _passkey_login(world: World, authenticator: SoftAuthenticator) -> pb.TokenResponse:
    login = await world.auth_stub.PasskeyLoginOptions(
        pb.PasskeyLoginOptionsRequest(), metadata=world.anonymous()
    )
    assertion = authenticator.get(json_format.MessageToDict(login.public_key))
    return await world.auth_stub.PasskeyLogin(
        pb.PasskeyLoginRequest(challenge_id=login.challenge_id, credential=_struct(assertion)),
        metadata=world.anonymous(),
    )


async def _enrol_totp(world: World, person: Person) -> tuple[pyotp.TOTP, list[str]]:
    enrolment = await world.auth_stub.StartTotpEnrollment(
        pb.StartTotpEnrollmentRequest(), metadata=world.as_user(person.grant)
    )
    totp = pyotp.TOTP(enrolment.secret)
    codes = await world.auth_stub.ConfirmTotp(
        pb.ConfirmTotpRequest(code=totp.at(world.clock.now())),
        metadata=world.as_user(person.grant),
    )
    world.clock.advance(timedelta(seconds=31))  # a fresh step: the next code is unused
    return totp, list(codes.backup_codes)


async def _ciphertexts_of(world: World, user_id: str) -> list[tuple[bytes, bytes]]:
    """(envelope, associated data) of what auth stores about the user, straight from the DB."""
    async with world.engine.connect() as conn:
        user = (await conn.execute(select(users).where(users.c.id == user_id))).one()
        out = [
            (bytes(user.email_ct), associated_data("auth", "user", user_id, "email")),
            (bytes(user.name_ct), associated_data("auth", "user", user_id, "name")),
        ]
        for row in await conn.execute(
            select(totp_credentials.c.secret_ct).where(totp_credentials.c.user_id == user_id)
        ):
            out.append(
                (bytes(row.secret_ct), associated_data("auth", "user", user_id, "totp_secret"))
            )
        for row in await conn.execute(
            select(backup_codes.c.id, backup_codes.c.code_ct).where(
                backup_codes.c.user_id == user_id
            )
        ):
            out.append(
                (bytes(row.code_ct), associated_data("auth", "backup_code", user_id, row.id))
            )
    return out


async def _dump(world: World) -> bytes:
    """Every value of every auth table, as bytes."""
    dump = bytearray()
    async with world.engine.connect() as conn:
        if world.engine.dialect.name == "postgresql":
            query = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        else:
            query = "SELECT name FROM sqlite_master WHERE type = 'table'"
        tables = [r[0] for r in await conn.execute(text(query))]
        for table in tables:
            for row in await conn.execute(text(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        dump += bytes(value)
                    elif value is not None:
                        dump += str(value).encode()
                    dump += b"\x00"
    return bytes(dump)


# -- the sole-owner rule and recent authentication ------------------------------------------


async def test_a_sole_owner_of_a_workspace_with_members_must_hand_it_over_first(
    tmp_path, backend
) -> None:
    async with start_world(tmp_path, backend) as world:
        ada = await world.person(name="Ada")
        kay = await world.person(name="Kay")
        async with world.engine.begin() as conn:
            await conn.execute(
                insert(memberships).values(
                    workspace_id=ada.workspace_id,
                    user_id=kay.user_id,
                    role="member",
                    created_at=world.clock.now(),
                )
            )
        assert await refusal(world.delete(ada)) == (
            grpc.StatusCode.ABORTED,
            "ownership_transfer_required",
        )
        # Nothing changed: still signed in, still there, nothing queued or recorded.
        assert (await world.validate(ada.tokens.access_token)).user_id == ada.user_id
        assert (await _user_row(world, ada.user_id)).deleted_at is None
        assert await world.events("account.deleted") == []
        assert await _count(world, subject_shred_requests) == 0

        await world.team_stub.ChangeMemberRole(
            team_pb2.ChangeMemberRoleRequest(user_id=kay.user_id, role="owner"),
            metadata=world.as_user(ada.grant),
        )
        await world.delete(ada)
        async with world.engine.connect() as conn:
            left = (
                await conn.execute(
                    select(memberships.c.user_id, memberships.c.role).where(
                        memberships.c.workspace_id == ada.workspace_id
                    )
                )
            ).all()
            closed = (
                await conn.execute(
                    select(workspaces.c.closed_at).where(workspaces.c.id == ada.workspace_id)
                )
            ).scalar_one()
        assert [tuple(r) for r in left] == [(kay.user_id, "owner")]
        assert closed is None  # Kay is still there
        assert (await world.validate(kay.tokens.access_token)).user_id == kay.user_id
        [removed] = [e for e in await world.events("member.removed") if e["subject"] == ada.user_id]
        assert (removed["workspace_id"], removed["reason"]) == (ada.workspace_id, "account_deleted")


async def test_deletion_needs_a_recent_login(tmp_path, backend) -> None:
    async with start_world(tmp_path, backend) as world:
        ada = await world.person()
        world.clock.advance(timedelta(seconds=601))
        assert await refusal(world.delete(ada)) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "recent_auth_required",
        )
        assert (await _user_row(world, ada.user_id)).deleted_at is None
        [refused] = await world.events("auth.recent_auth_required")
        assert refused["details"]["action"] == "DeleteAccount"
        fresh = await world.signed_in_again(ada)
        await world.delete(fresh)
        assert (await _user_row(world, ada.user_id)).deleted_at is not None


# -- nothing works afterwards --------------------------------------------------------------


async def test_after_deletion_no_token_link_factor_or_key_works(tmp_path, backend) -> None:
    async with start_world(tmp_path, backend) as world:
        ada = await world.person()
        key = (await world.create_key(ada)).api_key.id
        authenticator = await _register_passkey(world, ada)
        totp, codes = await _enrol_totp(world, ada)
        pending = await world.login(ada.email)  # a second factor pending: an MFA token
        assert pending.mfa_required
        other = await world.auth_stub.LoginMfa(  # a second session, from elsewhere
            pb.LoginMfaRequest(
                mfa_token=(await world.login(ada.email)).mfa_token, backup_code=codes[0]
            ),
            metadata=world.anonymous("198.51.100.23"),
        )
        magic = await _issue(
            world,
            SingleUseTokens(table=MAGIC_LINK_TABLE, purpose=MAGIC_LINK, clock=world.clock),
            ada.user_id,
        )
        reset = await _issue(
            world,
            SingleUseTokens(table=ACCOUNT_TOKENS, purpose=PASSWORD_RESET, clock=world.clock),
            ada.user_id,
        )
        verify = await _issue(
            world,
            SingleUseTokens(table=ACCOUNT_TOKENS, purpose=EMAIL_VERIFICATION, clock=world.clock),
            ada.user_id,
        )
        invited = await world.team_stub.CreateInvitation(
            team_pb2.CreateInvitationRequest(email="friend@example.com", role="member"),
            metadata=world.as_user(ada.grant),
        )

        await world.delete(ada)

        for tokens in (ada.tokens, other):
            assert (await refusal(world.validate(tokens.access_token)))[0] == UNAUTHENTICATED
            assert await refusal(
                world.auth_stub.Refresh(
                    pb.RefreshRequest(refresh_token=tokens.refresh_token),
                    metadata=world.anonymous(),
                )
            ) == (UNAUTHENTICATED, "session_revoked")
        assert await refusal(world.login(ada.email)) == (UNAUTHENTICATED, "invalid_credentials")
        assert (
            await refusal(
                world.auth_stub.LoginMfa(
                    pb.LoginMfaRequest(
                        mfa_token=pending.mfa_token, code=totp.at(world.clock.now())
                    ),
                    metadata=world.anonymous(),
                )
            )
        )[0] == UNAUTHENTICATED
        assert (
            await refusal(
                world.auth_stub.LoginMfa(
                    pb.LoginMfaRequest(mfa_token=pending.mfa_token, backup_code=codes[1]),
                    metadata=world.anonymous(),
                )
            )
        )[0] == UNAUTHENTICATED
        assert await refusal(
            world.auth_stub.RedeemMagicLink(
                pb.RedeemMagicLinkRequest(token=magic), metadata=world.anonymous()
            )
        ) == (UNAUTHENTICATED, "invalid_magic_link")
        resets = password_reset_pb2_grpc.PasswordResetServiceStub(world.channel)
        assert await refusal(
            resets.ConfirmPasswordReset(
                password_reset_pb2.ConfirmPasswordResetRequest(
                    token=reset, new_password="a brand new passphrase", code=totp.now()
                ),
                metadata=world.anonymous(),
            )
        ) == (UNAUTHENTICATED, "invalid_reset_token")
        accounts = account_pb2_grpc.AccountServiceStub(world.channel)
        assert await refusal(
            accounts.ConfirmEmailVerification(
                account_pb2.ConfirmEmailVerificationRequest(token=verify),
                metadata=world.anonymous(),
            )
        ) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_verification_link")
        assert (await refusal(_passkey_login(world, authenticator)))[0] == UNAUTHENTICATED

        async def key_revoked() -> bool:
            return await world.key_revoked(key) == ACCOUNT_DELETED

        await eventually(key_revoked)  # the commit woke the relay (it polls once a minute here)

        # What is left of the person in auth: the id and times.
        row = await _user_row(world, ada.user_id)
        assert row.email_index == DELETED_EMAIL_INDEX_PREFIX + ada.user_id
        assert (bytes(row.email_ct), bytes(row.name_ct)) == (b"", b"")
        assert row.password_hash == UNUSABLE_PASSWORD_HASH
        assert row.deleted_at is not None
        assert row.disabled_at is not None
        assert row.email_verified_at is None
        for table in (
            "totp_credentials",
            "backup_codes",
            "passkeys",
            "webauthn_user_handles",
            "webauthn_challenges",
            "mfa_challenges",
            "magic_links",
            "account_tokens",
            "known_networks",
            "new_network_alerts",
            "memberships",
        ):
            async with world.engine.connect() as conn:
                left = (
                    await conn.execute(
                        text(f"SELECT count(*) FROM {table} WHERE user_id = :u"), {"u": ada.user_id}
                    )
                ).scalar_one()
            assert left == 0, table
        async with world.engine.connect() as conn:
            session_ips = (
                await conn.execute(
                    text("SELECT ip, device FROM sessions WHERE user_id = :u"), {"u": ada.user_id}
                )
            ).all()
            closed = (
                await conn.execute(
                    select(workspaces.c.closed_at).where(workspaces.c.id == ada.workspace_id)
                )
            ).scalar_one()
            invitation = (
                await conn.execute(
                    text("SELECT used_at, revoked_at FROM invitations WHERE id = :i"),
                    {"i": invited.invitation_id},
                )
            ).one()
        assert session_ips
        assert set(session_ips) == {(None, None)}
        assert closed is not None  # its only member is gone
        assert invitation.revoked_at is not None
        assert b"198.51.100.23" not in await _dump(world)
        [deleted] = await world.events("account.deleted")
        assert (deleted["actor"], deleted["subject"]) == (f"user:{ada.user_id}", ada.user_id)
        assert (deleted["ip"], deleted["device"]) == (None, None)
        assert deleted["details"]["sessions_ended"] == 2
        assert deleted["details"]["workspaces_closed"] == 1
        assert ada.email.encode() not in str(deleted).encode()


class _Unreachable:
    async def send(self, message: Any) -> None:
        raise ConnectionRefusedError("no SMTP server here")


async def test_pending_mail_to_the_person_is_dropped(tmp_path, backend) -> None:
    async with start_world(tmp_path, backend) as world:
        ada = await world.person()
        world.auth.mail_relay._mailer = _Unreachable()  # what is queued stays pending
        queue = world.auth.mail_relay._queue
        sealed = await queue.seal(
            OutgoingEmail(to=ada.email, subject="Hello", text="...").for_user(ada.user_id)
        )
        assert under_subject(sealed.message_ct)
        async with world.store().transaction() as tx:
            await queue.enqueue(tx, sealed)
        # A sign-up on Ada's address: its notice to her is sealed before anyone knows it is
        # hers, and queued naming her account.
        await world.auth_stub.SignUp(
            pb.SignUpRequest(email=ada.email, password=PASSWORD, name="Someone"),
            metadata=world.anonymous(),
        )
        async with world.engine.connect() as conn:
            theirs = (
                (
                    await conn.execute(
                        select(mail_outbox.c.id).where(
                            mail_outbox.c.user_id == ada.user_id, mail_outbox.c.sent_at.is_(None)
                        )
                    )
                )
                .scalars()
                .all()
            )
        assert set(theirs) >= {sealed.id}
        assert len(theirs) == 2
        # One sealed for her now and queued after the deletion (a request in flight).
        in_flight = await queue.seal(
            OutgoingEmail(to=ada.email, subject="Late", text="...").for_user(ada.user_id)
        )
        await world.delete(ada)
        async with world.engine.connect() as conn:
            rows = (
                await conn.execute(select(mail_outbox).where(mail_outbox.c.id.in_(theirs)))
            ).all()
        for row in rows:
            assert (row.message_ct, row.sent_at, row.last_error) == (None, None, "account_deleted")
            assert row.failed_at is not None
        assert await world.auth.mail_relay.run_once() == 0

        # The one in flight can never be opened: the relay drops it rather than retrying it.
        async with world.store().transaction() as tx:
            await queue.enqueue(tx, in_flight)
        assert await world.auth.mail_relay.run_once() == 0
        async with world.engine.connect() as conn:
            late = (
                await conn.execute(select(mail_outbox).where(mail_outbox.c.id == in_flight.id))
            ).one()
        assert (late.message_ct, late.last_error) == (None, "SubjectErased")
        assert late.failed_at is not None


# -- signing up afresh ----------------------------------------------------------------------


async def test_the_address_signs_up_afresh_as_a_new_user(tmp_path, backend) -> None:
    async with start_world(tmp_path, backend) as world:
        ada = await world.person()
        await world.delete(ada)
        again = await world.person(ada.email, name="Ada again")
        assert again.user_id != ada.user_id
        me = await world.auth_stub.GetMe(pb.GetMeRequest(), metadata=world.as_user(again.grant))
        assert (me.user_id, me.email, me.name) == (again.user_id, ada.email, "Ada again")
        # The old account stays gone: its id finds no one to sign in as.
        assert (await _user_row(world, ada.user_id)).deleted_at is not None
        assert (await world.validate((await world.login(ada.email)).access_token)).user_id == (
            again.user_id
        )
        # And a deletion of the new one is a deletion of the new one only.
        await world.delete(again)
        assert len(await world.events("account.deleted")) == 2


# -- races ------------------------------------------------------------------------------------


async def test_parallel_deletes_delete_once(tmp_path, backend) -> None:
    async with start_world(tmp_path, backend) as world:
        ada = await world.person()
        answers = await asyncio.gather(
            *(world.delete(ada) for _ in range(8)), return_exceptions=True
        )
        assert answers == [pb.DeleteAccountResponse()] * 8, answers
        assert len(await world.events("account.deleted")) == 1
        assert len([e for e in await world.events("session.revoked")]) == 1
        assert await _count(world, subject_shred_requests) == 0  # shredded at once, once
        # The subject is shredded: crypto refuses to seal anything for it again.
        with pytest.raises(SubjectErased):
            await world.crypto_as_auth().encrypt(
                [(b"x", associated_data("auth", "probe"))], subject=f"user:{ada.user_id}"
            )


async def test_logins_racing_the_deletion_leave_no_live_session(tmp_path, backend) -> None:
    async with start_world(tmp_path, backend) as world:
        ada = await world.person()

        async def attempt() -> pb.TokenResponse | str | None:
            try:
                return await world.login(ada.email)
            except grpc.aio.AioRpcError as error:
                return error.code().name

        logins = [asyncio.create_task(attempt()) for _ in range(6)]
        await asyncio.sleep(0)
        await world.delete(ada)
        for outcome in await asyncio.gather(*logins):
            if isinstance(outcome, pb.TokenResponse):
                assert (await refusal(world.validate(outcome.access_token)))[0] == UNAUTHENTICATED
            else:
                assert outcome == "UNAUTHENTICATED"
        async with world.engine.connect() as conn:
            live = await conn.execute(
                text("SELECT count(*) FROM sessions WHERE user_id = :u AND revoked_at IS NULL"),
                {"u": ada.user_id},
            )
            assert live.scalar_one() == 0


# -- crypto down at the moment of deletion -----------------------------------------------------


async def test_crypto_down_at_deletion_the_shred_happens_once_it_is_back(tmp_path, backend) -> None:
    async with start_world(tmp_path, backend) as world:
        ada = await world.person(name="Ada Lovelace")
        await _enrol_totp(world, ada)
        await world.login(ada.email, ip="198.51.100.23")  # MFA pending from a second network
        before = await _ciphertexts_of(world, ada.user_id)
        assert len(before) == 2 + 1 + 10
        assert all(under_subject(ct) for ct, _ in before)
        crypto = world.crypto_as_auth()
        assert (await crypto.decrypt(before[:2])) == [ada.email.encode(), b"Ada Lovelace"]

        await world.stop_crypto()
        await world.delete(ada)  # no crypto needed: the shred is queued

        [queued] = await _shreds(world)
        assert queued.subject == f"user:{ada.user_id}"
        assert queued.last_error == "Unavailable"
        # Nothing personal is readable in auth's rows meanwhile: no envelope of the person
        # is left, nor where they signed in from.
        dump = await _dump(world)
        for ciphertext, _ in before:
            assert ciphertext not in dump
        for secret in (ada.email.encode(), b"Ada Lovelace", b"198.51.100.23", b"203.0.113.7"):
            assert secret not in dump
        # Not before its backoff: the relay leaves it.
        await world.start_crypto()
        relay = world.auth.shred_relay
        assert relay is not None
        assert await relay.run_once() == 0

        async def shredded() -> bool:
            # Past any backoff (auth's channel to crypto may still be reconnecting).
            world.clock.advance(timedelta(seconds=61))
            return await relay.run_once() == 1

        await eventually(shredded)
        assert await _shreds(world) == []
        for item in before:
            with pytest.raises(SubjectErased):
                await crypto.decrypt([item])
        assert await crypto.decrypt(before, tolerate_erased=True) == [None] * len(before)


async def _shreds(world: World) -> list[Any]:
    async with world.engine.connect() as conn:
        return list(await conn.execute(select(subject_shred_requests)))


async def test_a_shred_left_by_a_process_that_died_is_sent_when_its_lease_ends(
    tmp_path, backend
) -> None:
    """The deleting request claims its own row for 30 s: if it never calls crypto (the
    process died after its commit), the relay takes the row once that lease is over."""
    async with start_world(tmp_path, backend) as world:
        ada = await world.person()
        relay = world.auth.shred_relay
        assert relay is not None
        calls: list[str] = []

        async def died(request: Any) -> bool:
            calls.append(request.subject)
            return False

        relay.shred_now = died  # type: ignore[method-assign]
        await world.delete(ada)
        assert calls == [f"user:{ada.user_id}"]
        # A request that read the account before the deletion writes after it: a magic link
        # and its email (sealed while the subject was still there).
        late_link = await _issue(
            world,
            SingleUseTokens(table=MAGIC_LINK_TABLE, purpose=MAGIC_LINK, clock=world.clock),
            ada.user_id,
        )
        queue = world.auth.mail_relay._queue
        world.auth.mail_relay._mailer = _Unreachable()
        late_mail = await queue.seal(
            OutgoingEmail(to=ada.email, subject="Late", text="...").for_user(ada.user_id)
        )
        async with world.store().transaction() as tx:
            await queue.enqueue(tx, late_mail)
        assert await relay.run_once() == 0  # still leased to the deleting request
        world.clock.advance(timedelta(seconds=31))
        assert await relay.run_once() == 1
        assert await _shreds(world) == []
        # Erased with the shred: the late link and email are gone too.
        assert await _count(world, magic_links, magic_links.c.user_id == ada.user_id) == 0
        async with world.engine.connect() as conn:
            mail = (
                await conn.execute(select(mail_outbox).where(mail_outbox.c.id == late_mail.id))
            ).one()
        assert (mail.message_ct, mail.last_error) == (None, "account_deleted")
        assert await refusal(
            world.auth_stub.RedeemMagicLink(
                pb.RedeemMagicLinkRequest(token=late_link), metadata=world.anonymous()
            )
        ) == (UNAUTHENTICATED, "invalid_magic_link")
        with pytest.raises(SubjectErased):
            await world.crypto_as_auth().encrypt(
                [(b"x", associated_data("auth", "probe"))], subject=calls[0]
            )


async def test_nobody_else_is_touched(tmp_path, backend) -> None:
    async with start_world(tmp_path, backend) as world:
        ada = await world.person()
        kay = await world.person(f"kay-{uuid.uuid4().hex[:8]}@example.com", name="Kay")
        kays_key = (await world.create_key(kay)).api_key.id
        await world.delete(ada)
        me = await world.auth_stub.GetMe(pb.GetMeRequest(), metadata=world.as_user(kay.grant))
        assert (me.email, me.name) == (kay.email, "Kay")
        assert await world.key_revoked(kays_key) is None
        assert (await world.login(kay.email, PASSWORD)).access_token


async def _invitation_to(world: World, inviter: Person, email: str) -> str:
    """A pending invitation of inviter's workspace for `email`, as CreateInvitation stores it;
    returns its token (the email that would carry it is not needed here)."""
    from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT
    from palisade.auth.team.invitation_records import (
        INVITATION,
        INVITATION_TABLE,
        email_aad,
        invitations,
    )
    from palisade.common.crypto_client import Normalization

    crypto = world.crypto_as_auth()
    tokens = SingleUseTokens(table=INVITATION_TABLE, purpose=INVITATION, clock=world.clock)
    token = tokens.new_token()
    invitation_id = f"inv_{uuid.uuid4().hex}"
    [email_ct] = await crypto.encrypt([(email.encode(), email_aad(invitation_id))])
    [index, *_] = await crypto.blind_index(email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT)
    async with world.engine.begin() as conn:
        await conn.execute(
            insert(invitations).values(
                id=invitation_id,
                token_hash=tokens.check(token),
                workspace_id=inviter.workspace_id,
                email_index=index,
                email_ct=email_ct,
                role="member",
                created_by=inviter.user_id,
                created_at=world.clock.now(),
                expires_at=world.clock.now() + timedelta(days=7),
            )
        )
    return token


async def test_an_invitation_to_the_address_never_reaches_the_deleted_account(
    tmp_path, backend
) -> None:
    async with start_world(tmp_path, backend, with_apikeys=False) as world:
        ada = await world.person()
        kay = await world.person(f"kay-{uuid.uuid4().hex[:8]}@example.com", name="Kay")
        token = await _invitation_to(world, kay, ada.email)
        await world.delete(ada)
        # With the deleted account's (revoked) session, as a gateway that still cached it would
        # assert it: refused, nothing joined.
        assert (
            await refusal(
                world.team_stub.AcceptInvitation(
                    team_pb2.AcceptInvitationRequest(token=token),
                    metadata=world.as_user(ada.grant),
                )
            )
        )[0] == UNAUTHENTICATED
        assert await _count(world, memberships, memberships.c.user_id == ada.user_id) == 0
        # The address's owner, signed in nowhere, joins as a new person with a new id.
        tokens = await world.team_stub.AcceptInvitation(
            team_pb2.AcceptInvitationRequest(token=token, name="Ada", password=PASSWORD),
            metadata=world.anonymous(),
        )
        joined = await world.validate(tokens.access_token)
        assert joined.user_id != ada.user_id
        assert joined.workspace_id == kay.workspace_id
