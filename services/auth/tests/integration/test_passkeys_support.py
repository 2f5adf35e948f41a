"""Shared pieces for the passkey tests (no tests here): a real crypto service, the auth
database at head (both backends), a Passkeys built like server.py builds it, and the soft
authenticator from tests/support.

Test modules use it as `from .test_passkeys_support import crypto_service, passkey_env, softauthn`
with a module-scoped crypto fixture (see test_passkeys_login.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import select, update

from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT
from palisade.auth.local_keys import LocalKeys
from palisade.auth.mail import MailQueue
from palisade.auth.mail.account_notices import AccountNotices
from palisade.auth.passkeys.service import Passkeys
from palisade.auth.passkeys.store import passkeys as passkeys_table
from palisade.auth.sessions.geo import NullLocator
from palisade.auth.sessions.manager import ClientInfo, IssuedTokens, SessionManager, SessionPolicy
from palisade.auth.sessions.revocation import LocalRevocationFeed
from palisade.auth.store import MIGRATIONS_PACKAGE, AuthStore, outbox, users
from palisade.common.aad import associated_data
from palisade.common.caller import AssertionSigner
from palisade.common.clock import ManualClock
from palisade.common.crypto_client import CryptoClient, Normalization
from palisade.common.db import create_engine
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade.common.migrations import upgrade
from palisade.crypto.config import CryptoSettings
from palisade.crypto.server import serve_crypto

RP_ID = "localhost"
ORIGIN = "http://localhost:8080"
CLIENT = ClientInfo(ip="203.0.113.7", device="Firefox on Linux")


def _load_softauthn() -> ModuleType:
    """tests/support/softauthn.py as `softauthn`, whether or not tests/support is on sys.path
    (pytest's `pythonpath` setting puts it there; importlib mode does not)."""
    try:
        return importlib.import_module("softauthn")
    except ModuleNotFoundError:
        path = Path(__file__).resolve().parents[4] / "tests" / "support" / "softauthn.py"
        spec = importlib.util.spec_from_file_location("softauthn", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["softauthn"] = module  # before exec: dataclasses look their module up
        spec.loader.exec_module(module)
        return module


softauthn = _load_softauthn()


@dataclass
class PasskeyEnv:
    passkeys: Passkeys
    store: AuthStore
    sessions: SessionManager
    crypto: CryptoClient
    clock: ManualClock
    engine: Any

    async def add_user(
        self, email: str, name: str = "Ada Lovelace", *, verified: bool = True
    ) -> str:
        """A user with a workspace, stored as sign-up stores one (encrypted PII, blind index),
        its address then marked verified (verified=False: no passkey may be registered)."""
        user_id, workspace_id = f"usr_{uuid.uuid4().hex}", f"ws_{uuid.uuid4().hex}"
        [token] = await self.crypto.blind_index(email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT)
        email_ct, name_ct = await self.crypto.encrypt(
            [
                (email.encode(), associated_data("auth", "user", user_id, "email")),
                (name.encode(), associated_data("auth", "user", user_id, "name")),
            ]
        )
        async with self.store.transaction() as tx:
            now = self.clock.now()
            await tx.insert_user(
                user_id=user_id,
                email_index=token,
                email_ct=email_ct,
                name_ct=name_ct,
                password_hash="$argon2id$unused",
                now=now,
            )
            await tx.insert_workspace(workspace_id=workspace_id, name="Acme", now=now)
            await tx.insert_membership(
                workspace_id=workspace_id, user_id=user_id, role="owner", now=now
            )
        if verified:
            await self.set_verified(user_id, True)
        return user_id

    async def set_verified(self, user_id: str, verified: bool) -> None:
        """Sets (or clears) users.email_verified_at directly, as proving the address by an
        emailed link would set it: the verification ceremony is not what these tests test."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(email_verified_at=self.clock.now() if verified else None)
            )

    async def disable(self, user_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(users).where(users.c.id == user_id).values(disabled_at=self.clock.now())
            )

    async def register(
        self, authn: Any, user_id: str, name: str = "", **create: Any
    ) -> tuple[str, dict[str, Any]]:
        """A full registration ceremony; (passkey id, the response that was sent)."""
        challenge_id, options = await self.passkeys.registration_options(
            user_id=user_id, client=CLIENT
        )
        response = authn.create(options, **create)
        passkey_id = await self.passkeys.register(
            user_id=user_id,
            challenge_id=challenge_id,
            credential=response,
            name=name,
            client=CLIENT,
        )
        return passkey_id, response

    async def login(self, authn: Any, email: str | None = None, **get: Any) -> IssuedTokens:
        """A full login ceremony (username-less without an email)."""
        challenge_id, options = await self.passkeys.login_options(email=email, client=CLIENT)
        return await self.passkeys.login(
            challenge_id=challenge_id, credential=authn.get(options, **get), client=CLIENT
        )

    async def events(self, event_type: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(outbox.c.payload)
                .where(outbox.c.event_type == event_type)
                .order_by(outbox.c.id)
            )
            return [json.loads(r.payload) for r in rows]

    async def stored(self, passkey_id: str) -> Any:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(select(passkeys_table).where(passkeys_table.c.id == passkey_id))
            ).one()


@dataclass
class CryptoService:
    client: CryptoClient
    clock: ManualClock


@asynccontextmanager
async def crypto_service(data_dir: Path) -> AsyncIterator[CryptoService]:
    """A real crypto service (SQLite) and a client calling it as the auth service does.

    Starting and stopping one costs about half a second, so test modules share one (module
    event loop) and give each test a fresh auth database.
    """
    clock = ManualClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    settings = CryptoSettings(
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{data_dir / 'crypto.db'}",
        grpc_port=0,
        metrics_port=0,
        usage_sync_seconds=3600,
        shutdown_grace_seconds=0,
    )
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(serve_crypto(settings, clock=clock))
        keys = KeySource.from_master(
            read_document(settings.resolved_edge_keys_master_file()), "auth"
        )
        channel = insecure_channel(server.running.target)
        stack.push_async_callback(channel.close, None)
        signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=60)
        client = CryptoClient(channel=channel, identity=ServiceIdentity(name="auth", signer=signer))
        yield CryptoService(client, clock)


@asynccontextmanager
async def passkey_env(
    crypto: CryptoService,
    database_url: str,
    *,
    challenge_seconds: int = 300,
    local_keys: LocalKeys | None = None,
) -> AsyncIterator[PasskeyEnv]:
    """Passkeys on a fresh auth database at head, built like server.py builds it."""
    engine = create_engine(database_url, pool_size=12)
    local_keys = local_keys or LocalKeys(bytes(32))
    try:
        await upgrade(engine, MIGRATIONS_PACKAGE)
        store = AuthStore(engine=engine)
        sessions = SessionManager(
            store=store,
            crypto=crypto.client,
            revocations=LocalRevocationFeed(),
            policy=SessionPolicy(
                access_seconds=3600,
                refresh_seconds=86400,
                remember_me_refresh_seconds=30 * 86400,
                grace_seconds=60,
                absolute_seconds=7 * 86400,
                remember_me_absolute_seconds=30 * 86400,
            ),
            clock=crypto.clock,
            local_keys=local_keys,
        )
        passkeys = Passkeys(
            store=store,
            crypto=crypto.client,
            sessions=sessions,
            local_keys=local_keys,
            clock=crypto.clock,
            rp_id=RP_ID,
            rp_name="Palisade",
            origins=(ORIGIN, "http://127.0.0.1:8080"),
            challenge_seconds=challenge_seconds,
            notices=AccountNotices(
                store=store,
                crypto=crypto.client,
                mail=MailQueue(
                    crypto=crypto.client, clock=crypto.clock, from_address="auth@example.com"
                ),
                locator=NullLocator(),
                clock=crypto.clock,
            ),
        )
        yield PasskeyEnv(passkeys, store, sessions, crypto.client, crypto.clock, engine)
    finally:
        await engine.dispose()
