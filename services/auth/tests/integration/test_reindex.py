"""`palisade-auth reindex` and the refusal to retire index versions still in use (issue 9 item 7).

A real crypto gRPC server (port 0), its CLI, and auth's database, on SQLite and on Postgres.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from palisade.auth.accounts.reindex import Reindexer, reindex_from_settings, token_version
from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT
from palisade.auth.config import AuthSettings
from palisade.auth.mfa.second_factor import BACKUP_CODE_INDEX_CONTEXT
from palisade.auth.mfa.store import backup_codes
from palisade.auth.store import MIGRATIONS_PACKAGE, AuthStore, users
from palisade.common.aad import associated_data
from palisade.common.caller import AssertionSigner
from palisade.common.clock import ManualClock
from palisade.common.crypto_client import CryptoClient, Normalization
from palisade.common.db import create_engine
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade.common.migrations import upgrade
from palisade.crypto import cli as crypto_cli
from palisade.crypto.config import CryptoSettings
from palisade.crypto.server import CryptoServer, serve_crypto


@dataclass
class Env:
    crypto_server: CryptoServer
    crypto: CryptoClient
    clock: ManualClock
    engine: object
    store: AuthStore
    data_dir: Path
    crypto_db: str
    auth_db: str
    monkeypatch: pytest.MonkeyPatch

    def reindexer(self, **kwargs: object) -> Reindexer:
        return Reindexer(engine=self.engine, crypto=self.crypto, **kwargs)  # type: ignore[arg-type]

    async def add_user(self, email: str, *, index: str | None = None) -> str:
        """A user stored as sign-up stores one; `index`: a stale token instead of the real one."""
        user_id = f"usr_{uuid.uuid4().hex}"
        [token] = await self.crypto.blind_index(email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT)
        email_ct, name_ct = await self.crypto.encrypt(
            [
                (email.encode(), associated_data("auth", "user", user_id, "email")),
                (b"Ada", associated_data("auth", "user", user_id, "name")),
            ]
        )
        async with self.store.transaction() as tx:
            await tx.insert_user(
                user_id=user_id,
                email_index=index or token,
                email_ct=email_ct,
                name_ct=name_ct,
                password_hash="$argon2id$unused",
                now=self.clock.now(),
            )
        return user_id

    async def add_backup_code(self, user_id: str, code: str) -> str:
        code_id = f"bkc_{uuid.uuid4().hex}"
        [token] = await self.crypto.blind_index(
            f"{user_id}:{code}", Normalization.EXACT, BACKUP_CODE_INDEX_CONTEXT
        )
        [ct] = await self.crypto.encrypt(
            [(code.encode(), associated_data("auth", "backup_code", user_id, code_id))]
        )
        async with self.store.transaction() as tx:
            await tx.conn.execute(
                backup_codes.insert().values(
                    id=code_id,
                    user_id=user_id,
                    code_index=token,
                    code_ct=ct,
                    created_at=self.clock.now(),
                )
            )
        return code_id

    async def index_of(self, user_id: str) -> str:
        async with self.store.transaction() as tx:
            user = await tx.user(user_id)
        assert user is not None
        return user.email_index

    async def find(self, email: str) -> str | None:
        tokens = await self.crypto.blind_index(
            email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT, all_versions=True
        )
        async with self.store.transaction() as tx:
            user = await tx.user_by_email_index(tokens)
        return None if user is None else user.id

    async def crypto_cli(self, *args: str) -> int:
        self.monkeypatch.setenv("PALISADE_DATA_DIR", str(self.data_dir))
        self.monkeypatch.setenv("PALISADE_CRYPTO_DATABASE_URL", self.crypto_db)
        code = await asyncio.to_thread(crypto_cli.main, list(args))
        self.crypto_server.keyring.reload_if_changed()  # what the server does on its timer
        return code

    async def rotate_index(self) -> None:
        assert await self.crypto_cli("keys", "rotate", "--index") == 0
        self.clock.advance(3600)  # well past the keyring reload and in-flight margin


@pytest.fixture(name="env")
async def env_fixture(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path, monkeypatch
) -> AsyncIterator[Env]:
    if database_url.startswith("postgresql"):
        crypto_db = request.getfixturevalue("postgres_database_factory")()
    else:
        crypto_db = f"sqlite+aiosqlite:///{tmp_path / 'crypto.db'}"
    clock = ManualClock(datetime.now(UTC))
    settings = CryptoSettings(
        data_dir=tmp_path,
        database_url=crypto_db,
        grpc_port=0,
        metrics_port=0,
        usage_sync_seconds=3600,
        shutdown_grace_seconds=0,
    )
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(serve_crypto(settings, clock=clock))
        master = read_document(settings.resolved_edge_keys_master_file())
        signer = AssertionSigner(
            keys=KeySource.from_master(master, "auth"), clock=clock, ttl_seconds=60
        )
        channel = insecure_channel(server.running.target)
        stack.push_async_callback(channel.close, None)
        client = CryptoClient(channel=channel, identity=ServiceIdentity(name="auth", signer=signer))
        engine = create_engine(database_url)
        stack.push_async_callback(engine.dispose)
        await upgrade(engine, MIGRATIONS_PACKAGE)
        yield Env(
            server,
            client,
            clock,
            engine,
            AuthStore(engine=engine),
            tmp_path,
            crypto_db,
            database_url,
            monkeypatch,
        )


async def test_reindex_moves_rows_to_the_primary_and_lookups_survive_retire(env: Env) -> None:
    ada = await env.add_user("ada@example.com")
    code = await env.add_backup_code(ada, "abcde-fghjk")
    bob = await env.add_user("bob@example.com")
    assert token_version(await env.index_of(ada)) == 1
    await env.rotate_index()

    result = await env.reindexer(batch_size=1).run()

    assert result.users_scanned == 2
    assert result.users_updated == 2
    assert result.codes_updated == 1
    assert result.collisions == []
    assert result.versions_in_use == {"users.email_index": [2], "backup_codes.code_index": [2]}
    assert result.reported
    assert token_version(await env.index_of(ada)) == 2
    async with env.store.transaction() as tx:
        stored = (
            await tx.conn.execute(
                select(backup_codes.c.code_index).where(backup_codes.c.id == code)
            )
        ).scalar_one()
    assert token_version(stored) == 2

    again = await env.reindexer().run()  # idempotent
    assert again.users_updated == 0
    assert again.codes_updated == 0

    assert await env.crypto_cli("keys", "retire", "--below", "2", "--index") == 0
    assert env.crypto_server.keyring.current.index.min_version == 2
    assert await env.find("Ada@Example.com") == ada
    assert await env.find("bob@example.com") == bob


async def test_a_collision_is_reported_not_applied(env: Env) -> None:
    # Stored before full case folding: "straße" had its own token; now it folds to "strasse".
    legacy = await env.add_user("straße@example.com", index="bi1.1.legacy-lowercased-token")
    other = await env.add_user("strasse@example.com")
    result = await env.reindexer().run()
    assert result.collisions == [legacy]
    assert await env.index_of(legacy) == "bi1.1.legacy-lowercased-token"
    assert await env.find("strasse@example.com") == other
    assert 1 in result.versions_in_use["users.email_index"]


async def test_a_resumed_run_continues_after_the_given_user(env: Env) -> None:
    ids = sorted([await env.add_user(f"user{i}@example.com") for i in range(4)])
    await env.rotate_index()
    result = await env.reindexer(batch_size=2).run(after=ids[1])
    assert result.users_scanned == 2
    assert result.last_user_id == ids[3]
    assert [token_version(await env.index_of(i)) for i in ids] == [1, 1, 2, 2]
    assert result.versions_in_use["users.email_index"] == [1, 2]  # whole table, not the walk


async def test_a_concurrent_email_change_is_not_overwritten(env: Env, monkeypatch) -> None:
    ada = await env.add_user("ada@example.com")
    await env.rotate_index()
    [new_token] = await env.crypto.blind_index(
        "ada.new@example.com", Normalization.EMAIL, EMAIL_INDEX_CONTEXT
    )
    [new_ct] = await env.crypto.encrypt(
        [(b"ada.new@example.com", associated_data("auth", "user", ada, "email"))]
    )
    original = env.crypto.blind_index_many

    async def change_meanwhile(*args, **kwargs):
        tokens = await original(*args, **kwargs)
        async with env.store.transaction() as tx:  # the user changes their email right now
            await tx.conn.execute(
                update(users)
                .where(users.c.id == ada)
                .values(email_index=new_token, email_ct=new_ct)
            )
        return tokens

    monkeypatch.setattr(env.crypto, "blind_index_many", change_meanwhile)
    result = await env.reindexer().run()
    assert result.users_updated == 0
    assert result.users_changed_meanwhile == 1
    assert await env.index_of(ada) == new_token


async def test_the_cli_job_prints_counts_and_ids_never_emails(env: Env, capsys) -> None:
    ada = await env.add_user("ada.secret@example.com")
    await env.add_user("straße@example.com", index="bi1.1.legacy")
    await env.add_user("strasse@example.com")
    # No clock jump here: this job signs its assertions with the real clock.
    assert await env.crypto_cli("keys", "rotate", "--index") == 0
    settings = AuthSettings(
        data_dir=env.data_dir,
        database_url=env.auth_db,
        crypto_target=env.crypto_server.running.target,
        reindex_pause_seconds=0,
    )
    capsys.readouterr()
    result = await reindex_from_settings(settings, after=None)
    out = capsys.readouterr()
    printed = out.out + out.err
    assert "users updated: 2" in printed
    assert "collisions (left alone): 1" in printed
    assert result.collisions[0] in printed
    for secret in ("ada.secret", "straße", "strasse", "example.com"):
        assert secret not in printed
    assert ada not in result.collisions


async def test_batches_pause_between_them(env: Env) -> None:
    for i in range(3):
        await env.add_user(f"u{i}@example.com")
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    await env.reindexer(batch_size=1, pause_seconds=0.5, sleep=sleep).run()
    assert pauses == [0.5, 0.5, 0.5]  # between the 4 reads (the last finds nothing)
