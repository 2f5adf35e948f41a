"""Shared pieces for the key revocation and account disabling tests (no tests here): real
crypto, auth and apikeys gRPC servers on one ManualClock, on SQLite or Postgres, and the
gateway's side of both conversations (per-call signed assertions).

Test modules use it as `from .test_key_revocation_support import database_factory, start_stack`
with a `backend` fixture of their own, parametrized by backend.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from deferred_signing import DeferredSigning
from ports import port_for_later
from sqlalchemy import text

from palisade.apikeys.config import ApiKeysSettings
from palisade.apikeys.server import ApiKeysServer, serve_apikeys
from palisade.auth.accounts.key_revocation_relay import KeyRevoker
from palisade.auth.config import AuthSettings
from palisade.auth.server import AuthServer, serve_auth
from palisade.auth.store import AuthStore
from palisade.common.caller import AssertionSigner
from palisade.common.clock import ManualClock
from palisade.common.edge_keys import KeyDocument, KeySource, read_document
from palisade.crypto.config import CryptoSettings
from palisade.crypto.server import serve_crypto
from palisade_api.apikeys.v1 import apikeys_pb2 as kpb
from palisade_api.apikeys.v1 import apikeys_pb2_grpc
from palisade_api.auth.v1 import auth_pb2_grpc

PASSWORD = "correct horse battery staple"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


def free_port() -> int:
    """A port nothing listens on right now (for a service started later), from below the
    ephemeral range so no client connection takes it first (ports.port_for_later)."""
    return port_for_later()


async def eventually(check: Callable[[], Awaitable[bool]], *, seconds: float = 10.0) -> None:
    """Waits (real time, bounded) for work another task does in the background to show."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the background work never happened")
        await asyncio.sleep(0.02)


def database_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """For a fixture parametrized with "sqlite" and "postgres": a factory of fresh database
    URLs (one per service) on that backend."""
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        factory = request.getfixturevalue("postgres_database_factory")
        return lambda _name: str(factory())
    return lambda name: f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}"


@dataclass
class Stack:
    clock: ManualClock
    master: KeyDocument
    data_dir: Path
    auth_db: str
    apikeys_db: str
    apikeys_port: int
    crypto_target: str
    auths: list[AuthServer]
    auth_stub: auth_pb2_grpc.AuthServiceStub
    auth_signing: DeferredSigning
    apikeys_signing: DeferredSigning
    exits: AsyncExitStack
    apikeys: ApiKeysServer | None = None
    apikeys_stub: apikeys_pb2_grpc.ApiKeysServiceStub | None = None
    _apikeys_exit: AsyncExitStack | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def auth(self) -> AuthServer:
        return self.auths[0]

    def store(self, replica: int = 0) -> AuthStore:
        return AuthStore(engine=self.auths[replica].engine)

    # -- apikeys, stopped and started at will (on the same port and database) -----------------

    async def start_apikeys(self) -> None:
        assert self.apikeys is None
        exits = AsyncExitStack()
        await exits.__aenter__()
        self.apikeys = await exits.enter_async_context(
            serve_apikeys(
                ApiKeysSettings(
                    data_dir=self.data_dir,
                    database_url=self.apikeys_db,
                    crypto_target=self.crypto_target,
                    auth_target=self.auth.running.target,
                    grpc_port=self.apikeys_port,
                    metrics_port=0,
                    shutdown_grace_seconds=0,
                ),
                clock=self.clock,
                relay_notices=False,
            )
        )
        channel = await exits.enter_async_context(
            self.apikeys_signing.channel(f"127.0.0.1:{self.apikeys_port}")
        )
        self.apikeys_stub = apikeys_pb2_grpc.ApiKeysServiceStub(channel)
        self._apikeys_exit = exits

    async def stop_apikeys(self) -> None:
        assert self._apikeys_exit is not None
        await self._apikeys_exit.aclose()
        self.apikeys = self.apikeys_stub = self._apikeys_exit = None

    # -- the gateway's side -------------------------------------------------------------------

    def anonymous(self, ip: str = "203.0.113.7") -> tuple[tuple[str, str], ...]:
        return self.auth_signing.marker(
            "gateway", principal="anonymous", client_ip=ip, user_agent=USER_AGENT
        )

    def gateway(self) -> tuple[tuple[str, str], ...]:
        return self.auth_signing.marker("gateway")

    def key_owner(self, user_id: str, workspace_id: str) -> tuple[tuple[str, str], ...]:
        """The gateway speaking for a freshly signed-in owner, to apikeys."""
        return self.apikeys_signing.marker(
            "gateway",
            principal=f"user:{user_id}",
            workspace_id=workspace_id,
            session_id=f"ses_{uuid.uuid4().hex}",
            client_ip="203.0.113.7",
            user_agent=USER_AGENT,
            role="owner",
            authenticated_at=int(self.clock.timestamp() - 5),
        )

    async def create_key(self, user_id: str, workspace_id: str) -> kpb.CreatedApiKey:
        assert self.apikeys_stub is not None
        return await self.apikeys_stub.CreateApiKey(
            kpb.CreateApiKeyRequest(name="Server key", type="secret", scopes=["chats:read"]),
            metadata=self.key_owner(user_id, workspace_id),
        )

    async def key_states(self, *key_ids: str) -> dict[str, str | None]:
        """Each key's revocation reason in apikeys' database (None: still live)."""
        assert self.apikeys is not None
        async with self.apikeys.engine.connect() as conn:
            rows = await conn.execute(text("SELECT id, revoke_reason FROM api_keys"))
            found = {r.id: r.revoke_reason for r in rows}
        return {key_id: found[key_id] for key_id in key_ids}

    async def pending_requests(self) -> list[Any]:
        async with self.auth.engine.connect() as conn:
            return list(
                await conn.execute(
                    text(
                        "SELECT id, user_id, workspace_id, reason, attempts, last_error"
                        " FROM key_revocation_requests ORDER BY created_at, id"
                    )
                )
            )


def _settings(stack_values: dict[str, Any], **overrides: Any) -> AuthSettings:
    values = dict(stack_values)
    values.update(overrides)
    return AuthSettings(**values)


@asynccontextmanager
async def start_stack(
    tmp_path: Path,
    database: Callable[[str], str],
    *,
    with_apikeys: bool = True,
    replicas: int = 1,
    key_revoker: Callable[[AuthSettings, ManualClock], KeyRevoker | None] | None = None,
    **auth_overrides: Any,
) -> AsyncIterator[Stack]:
    """crypto, `replicas` auth servers on one database, and (with_apikeys) apikeys.

    The auth servers' key revocation relays poll once a minute by default here, so whatever
    reaches apikeys quickly was woken by the commit that queued it."""
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    apikeys_port = free_port()
    async with AsyncExitStack() as exits:
        crypto = await exits.enter_async_context(
            serve_crypto(
                CryptoSettings(
                    data_dir=tmp_path,
                    database_url=f"sqlite+aiosqlite:///{tmp_path / 'crypto.db'}",
                    grpc_port=0,
                    metrics_port=0,
                    usage_sync_seconds=3600,
                    shutdown_grace_seconds=0,
                ),
                clock=clock,
            )
        )
        master = read_document(tmp_path / "keys" / "edges.json")

        def signer_for(issuer: str) -> AssertionSigner:
            return AssertionSigner(
                keys=KeySource.from_master(master, issuer), clock=clock, ttl_seconds=60
            )

        auth_db = database("auth")
        values: dict[str, Any] = {
            "data_dir": tmp_path,
            "database_url": auth_db,
            "redis_url": None,
            "crypto_target": crypto.running.target,
            "apikeys_target": f"127.0.0.1:{apikeys_port}",
            "grpc_port": 0,
            "metrics_port": 0,
            "shutdown_grace_seconds": 0,
            "hashing_threads": 2,
            "key_revocation_poll_seconds": 60,
        }
        settings = _settings(values, **auth_overrides)
        auths = []
        for _ in range(replicas):
            revoker = key_revoker(settings, clock) if key_revoker else None
            auths.append(
                await exits.enter_async_context(
                    serve_auth(settings, clock=clock, key_revoker=revoker)
                )
            )
        auth_signing = DeferredSigning(audience="auth", signer_for=signer_for)
        channel = await exits.enter_async_context(auth_signing.channel(auths[0].running.target))
        stack = Stack(
            clock=clock,
            master=master,
            data_dir=tmp_path,
            auth_db=auth_db,
            apikeys_db=database("apikeys"),
            apikeys_port=apikeys_port,
            crypto_target=crypto.running.target,
            auths=auths,
            auth_stub=auth_pb2_grpc.AuthServiceStub(channel),
            auth_signing=auth_signing,
            apikeys_signing=DeferredSigning(audience="apikeys", signer_for=signer_for),
            exits=exits,
        )
        stack.extra["settings"] = settings
        if with_apikeys:
            await stack.start_apikeys()
        try:
            yield stack
        finally:
            if stack.apikeys is not None:
                await stack.stop_apikeys()
