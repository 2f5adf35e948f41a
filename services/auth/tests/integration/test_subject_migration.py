"""The subject migration (issue 13 item 6): rows sealed before subject keys move under their
user's subject, resumably and idempotently, a concurrent change always wins, and every row
reads the same before, during and after. On SQLite and Postgres, with real crypto and auth.

"Rows from before" are made the way they were written then: each envelope of a column the
job covers is opened and sealed again under no subject (format 1), with its associated data.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from sqlalchemy import insert, select, update

from palisade.auth.accounts.subject_migration import (
    COLUMNS,
    SealedColumn,
    SubjectMigration,
    migrate_until_done,
)
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import ACCOUNT_TOKENS, EMAIL_CHANGE
from palisade.auth.server import serve_auth
from palisade.auth.store import users
from palisade.auth.subjects import user_subject
from palisade.auth.team.invitation_records import email_aad, invitations
from palisade.common.crypto_client import CryptoClient, Normalization, SubjectErased
from palisade.common.errors import Unavailable
from palisade_api.auth.v1 import account_pb2, account_pb2_grpc
from palisade_api.auth.v1 import auth_pb2 as pb

from .deletion_support import Person, World, start_world
from .test_key_revocation_support import database_factory, eventually


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    return database_factory(request, tmp_path)


def _column(name: str) -> SealedColumn:
    [column] = [c for c in COLUMNS if c.name == name]
    return column


async def _envelopes(world: World, column: SealedColumn) -> dict[Any, tuple[Any, bytes]]:
    """row key -> (owner id, envelope) of the column's rows (non-empty ones)."""
    table = column.table
    async with world.engine.connect() as conn:
        rows = await conn.execute(
            select(
                table.c[column.key].label("row_key"),
                table.c[column.owner].label("owner_id"),
                table.c[column.column].label("ct"),
            ).where(*column.where)
        )
        return {r.row_key: (r.owner_id, bytes(r.ct)) for r in rows if r.ct}


async def _as_before(world: World, crypto: CryptoClient) -> int:
    """Seals every envelope the job covers again under no subject, as before subject keys;
    returns how many."""
    made = 0
    for column in COLUMNS:
        found = await _envelopes(world, column)
        for key, (owner, ct) in found.items():
            row = _Row(key, owner)
            [plain] = await crypto.decrypt([(ct, column.aad(row))])
            [old] = await crypto.encrypt([(plain, column.aad(row))])
            async with world.engine.begin() as conn:
                await conn.execute(
                    update(column.table)
                    .where(column.table.c[column.key] == key)
                    .values({column.column: old})
                )
            made += 1
    return made


class _Row:
    def __init__(self, row_key: Any, owner_id: str) -> None:
        self.row_key, self.owner_id = row_key, owner_id


async def _formats(world: World) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for column in COLUMNS:
        out[column.name] = {ct[0] for _, ct in (await _envelopes(world, column)).values()}
    return out


async def _me(world: World, person: Person) -> tuple[str, str]:
    me = await world.auth_stub.GetMe(pb.GetMeRequest(), metadata=world.as_user(person.grant))
    return me.email, me.name


async def _people(world: World, crypto: CryptoClient) -> tuple[list[Person], pyotp.TOTP, str]:
    """Three people: one with TOTP (secret and backup codes), one with an email change
    pending (its token returned), one who accepted an invitation (its sealed address)."""
    ada = await world.person(name="Ada")
    grace = await world.person(name="Grace")
    kay = await world.person(name="Kay")
    enrolment = await world.auth_stub.StartTotpEnrollment(
        pb.StartTotpEnrollmentRequest(), metadata=world.as_user(ada.grant)
    )
    totp = pyotp.TOTP(enrolment.secret)
    await world.auth_stub.ConfirmTotp(
        pb.ConfirmTotpRequest(code=totp.at(world.clock.now())), metadata=world.as_user(ada.grant)
    )
    world.clock.advance(timedelta(seconds=31))
    change = await _pending_change(
        world, crypto, grace, f"grace-{uuid.uuid4().hex[:6]}@example.org"
    )
    invitation_id = f"inv_{uuid.uuid4().hex}"
    [invited_ct] = await crypto.encrypt(
        [(kay.email.encode(), email_aad(invitation_id))], subject=user_subject(kay.user_id)
    )
    async with world.engine.begin() as conn:
        await conn.execute(
            insert(invitations).values(
                id=invitation_id,
                token_hash=os.urandom(32),
                workspace_id=ada.workspace_id,
                email_index="bi1.1.x",
                email_ct=invited_ct,
                role="member",
                created_by=ada.user_id,
                created_at=world.clock.now(),
                expires_at=world.clock.now() + timedelta(days=7),
                used_at=world.clock.now(),
                accepted_by=kay.user_id,
            )
        )
    return [ada, grace, kay], totp, change


async def _pending_change(world: World, crypto: CryptoClient, person: Person, new: str) -> str:
    """An email-change link of person's to `new`, as a request stores it (the requesting
    session: the person's)."""
    from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT
    from palisade.auth.accounts.verification import pii_aad

    [sealed] = await crypto.encrypt(
        [(new.encode(), pii_aad(person.user_id, "new_email"))],
        subject=user_subject(person.user_id),
    )
    [index, *_] = await crypto.blind_index(new, Normalization.EMAIL, EMAIL_INDEX_CONTEXT)
    tokens = SingleUseTokens(table=ACCOUNT_TOKENS, purpose=EMAIL_CHANGE, clock=world.clock)
    token = tokens.new_token()
    async with world.store().transaction() as tx:
        await tokens.issue(
            tx,
            token=token,
            user_id=person.user_id,
            lifetime=timedelta(hours=1),
            retire_siblings=False,
            values={
                "new_email_ct": sealed,
                "new_email_index": index,
                "session_id": person.grant.session_id,
            },
        )
    return token


async def test_rows_from_before_move_under_their_subject_and_read_the_same(
    tmp_path, backend
) -> None:
    async with start_world(tmp_path, backend, with_apikeys=False) as world:
        crypto = world.crypto_as_auth()
        people, totp, _change = await _people(world, crypto)
        made = await _as_before(world, crypto)
        assert made == 3 * 2 + 1 + 10 + 1 + 1  # names and emails, TOTP, codes, change, invite
        assert set().union(*(await _formats(world)).values()) == {1}
        shown = [await _me(world, p) for p in people]
        migration = SubjectMigration(engine=world.engine, crypto=crypto, batch_size=4)
        assert sum((await migration.remaining()).values()) == made

        result = await migration.run()

        assert result.migrated == made
        assert (result.changed_meanwhile, result.unreadable) == (0, [])
        assert result.remaining == {c.name: 0 for c in COLUMNS}
        assert set().union(*(await _formats(world)).values()) == {2}
        assert [await _me(world, p) for p in people] == shown
        ada = people[0]
        pending = await world.login(ada.email)
        assert pending.mfa_required  # the TOTP secret still opens, under the subject now
        await world.auth_stub.LoginMfa(
            pb.LoginMfaRequest(mfa_token=pending.mfa_token, code=totp.at(world.clock.now())),
            metadata=world.anonymous(),
        )
        assert "users.email_ct: scanned 3, migrated 3" in result.lines()[0]
        assert not any(p.email in line for line in result.lines() for p in people)

        # Idempotent: nothing is left to do.
        again = await migration.run()
        assert (again.migrated, sum(c.scanned for c in again.columns.values())) == (0, 0)

        # Really under each user's own subject: shredding Ada's erases hers only.
        assert await crypto.shred_subject(user_subject(ada.user_id))
        for column in COLUMNS:
            for key, (owner, ct) in (await _envelopes(world, column)).items():
                item = (ct, column.aad(_Row(key, owner)))
                if owner == ada.user_id:
                    with pytest.raises(SubjectErased):
                        await crypto.decrypt([item])
                else:
                    await crypto.decrypt([item])


class _FailingCrypto:
    """The real client, until `fail_after` Encrypt calls: then crypto is 'down'."""

    def __init__(self, crypto: CryptoClient, fail_after: int) -> None:
        self._crypto = crypto
        self.encrypts = 0
        self.fail_after = fail_after

    async def decrypt(self, *args: Any, **kwargs: Any) -> Any:
        return await self._crypto.decrypt(*args, **kwargs)

    async def encrypt(self, *args: Any, **kwargs: Any) -> Any:
        self.encrypts += 1
        if self.encrypts > self.fail_after:
            raise Unavailable("the crypto service is unavailable")
        return await self._crypto.encrypt(*args, **kwargs)


async def test_a_run_stopped_midway_is_finished_by_the_next_and_reads_work_throughout(
    tmp_path, backend
) -> None:
    async with start_world(tmp_path, backend, with_apikeys=False) as world:
        crypto = world.crypto_as_auth()
        people = [await world.person(name=f"Person {i}") for i in range(5)]
        shown = [await _me(world, p) for p in people]
        made = await _as_before(world, crypto)
        failing = _FailingCrypto(crypto, fail_after=2)
        stopped = SubjectMigration(engine=world.engine, crypto=failing, batch_size=2)  # type: ignore[arg-type]
        with pytest.raises(Unavailable):
            await stopped.run()
        left = sum((await stopped.remaining()).values())
        assert left == made - 4  # two batches of two were written before crypto went away
        formats = await _formats(world)
        assert formats["users.email_ct"] == {1, 2}  # mixed rows...
        assert [await _me(world, p) for p in people] == shown  # ...all read alike

        # A real outage now, waited out by the start-up loop: crypto comes back during its
        # backoff and the next pass finishes the job.
        await world.stop_crypto()
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            if world.crypto_exit is None:
                await world.start_crypto()
            await asyncio.sleep(0.05)  # not the backoff itself: the channel reconnecting

        result = await migrate_until_done(
            SubjectMigration(engine=world.engine, crypto=crypto, batch_size=2), sleep=sleep
        )
        assert waits[:1] == [1.0]
        assert result.remaining == {c.name: 0 for c in COLUMNS}
        assert result.migrated == left
        assert set().union(*(await _formats(world)).values()) == {2}
        assert [await _me(world, p) for p in people] == shown


class _MeddlingCrypto:
    """The real client; before its n-th Encrypt (the job's, between its read and its write)
    it runs `meddle` once: a concurrent change."""

    def __init__(self, crypto: CryptoClient, meddle: Any, on_call: int = 1) -> None:
        self._crypto = crypto
        self._meddle = meddle
        self._on_call = on_call
        self.calls = 0

    async def decrypt(self, *args: Any, **kwargs: Any) -> Any:
        return await self._crypto.decrypt(*args, **kwargs)

    async def encrypt(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self._on_call:
            await self._meddle()
        return await self._crypto.encrypt(*args, **kwargs)


async def test_a_concurrent_change_wins_over_the_migration(tmp_path, backend) -> None:
    async with start_world(tmp_path, backend, with_apikeys=False) as world:
        crypto = world.crypto_as_auth()
        grace = await world.person(name="Grace")
        new_address = f"grace-{uuid.uuid4().hex[:6]}@example.org"
        token = await _pending_change(world, crypto, grace, new_address)
        kay = await world.person(name="Kay")
        await _as_before(world, crypto)
        accounts = account_pb2_grpc.AccountServiceStub(world.channel)

        async def meddle() -> None:
            # Grace's email change is confirmed and Kay deletes their account, both after the
            # job read their rows and before it writes them.
            await accounts.ConfirmEmailVerification(
                account_pb2.ConfirmEmailVerificationRequest(token=token),
                metadata=world.anonymous(),
            )
            await world.delete(kay)

        migration = SubjectMigration(
            engine=world.engine,
            crypto=_MeddlingCrypto(crypto, meddle),  # type: ignore[arg-type]
            batch_size=10,
        )
        result = await migration.run()

        emails = result.columns["users.email_ct"]
        # Grace's row: the confirmation's new envelope stands; Kay's: erased (the encryption
        # for a shredded subject is refused) and the deleted row holds nothing.
        assert (emails.migrated, emails.changed_meanwhile, emails.erased) == (0, 1, 1)
        assert (await _me(world, grace))[0] == new_address
        names = result.columns["users.name_ct"]
        assert (names.migrated, names.erased) == (1, 0)  # Kay's row is skipped: deleted
        async with world.engine.connect() as conn:
            kays = (await conn.execute(select(users).where(users.c.id == kay.user_id))).one()
        assert (bytes(kays.email_ct), bytes(kays.name_ct)) == (b"", b"")
        assert result.remaining == {c.name: 0 for c in COLUMNS}


async def test_the_service_migrates_in_the_background_at_start(tmp_path, backend) -> None:
    async with start_world(tmp_path, backend, with_apikeys=False) as world:
        crypto = world.crypto_as_auth()
        people = [await world.person(name=f"P{i}") for i in range(3)]
        made = await _as_before(world, crypto)
        assert made == 6
        settings = world.settings.model_copy(update={"subject_migration_on_start": True})
        async with serve_auth(settings, clock=world.clock) as second:
            migration = second.subject_migration
            assert migration is not None

            async def done() -> bool:
                return sum((await migration.remaining()).values()) == 0

            await eventually(done)
        assert set().union(*(await _formats(world)).values()) == {2}
        assert [await _me(world, p) for p in people] == [
            (p.email, f"P{i}") for i, p in enumerate(people)
        ]


async def test_the_cli_migrates_and_prints_counts_only(tmp_path, backend) -> None:
    async with start_world(tmp_path, backend, with_apikeys=False) as world:
        crypto = world.crypto_as_auth()
        people = [await world.person(name="Secret Name") for _ in range(2)]
        await _as_before(world, crypto)
        status, out, err = await _cli(world, "subjects", "migrate")
        assert status == 0, err
        assert "users.email_ct: scanned 2, migrated 2" in out
        assert "left without a subject 0" in out
        for p in people:
            assert p.email not in out + err
        assert "Secret Name" not in out + err
        assert set().union(*(await _formats(world)).values()) == {2}
        await world.stop_crypto()
        status, out, err = await _cli(world, "subjects", "migrate")
        # Nothing left to do needs no crypto: it reads only envelopes still in format 1.
        assert status == 0, err
        await _as_before_one(world, people[0])
        status, _, err = await _cli(world, "subjects", "migrate")
        assert status == 3
        assert "crypto is unavailable" in err


async def _as_before_one(world: World, person: Person) -> None:
    """A format 1 envelope in person's row (its content is never opened by this test)."""
    envelope = bytes([1]) + b"\x00" * 40
    async with world.engine.begin() as conn:
        await conn.execute(
            update(users).where(users.c.id == person.user_id).values(name_ct=envelope)
        )


async def _cli(world: World, *args: str) -> tuple[int, str, str]:
    """`palisade-auth ...` in its own process, configured like the running service; the
    services' ManualClock follows real time meanwhile (the command signs with real time)."""
    env = {
        **os.environ,
        "PALISADE_DATA_DIR": str(world.data_dir),
        "PALISADE_AUTH_DATABASE_URL": world.auth_db,
        "PALISADE_AUTH_CRYPTO_TARGET": world.crypto_target,
        "PALISADE_AUTH_LOG_LEVEL": "WARNING",
    }

    async def follow() -> None:
        while True:
            world.clock.set(max(world.clock.now(), datetime.now(UTC)))
            await asyncio.sleep(0.05)

    follower = asyncio.create_task(follow())
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "palisade.auth",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        follower.cancel()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
