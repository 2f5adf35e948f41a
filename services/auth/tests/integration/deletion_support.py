"""Shared by the account deletion and subject migration tests (no tests here): real crypto,
auth and apikeys gRPC servers on one ManualClock, the auth database on SQLite or Postgres, and
a crypto service that can be stopped and started again on the same port and database (its
outages are what these tests are about).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from deferred_signing import DeferredSigning
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.apikeys.config import ApiKeysSettings
from palisade.apikeys.server import ApiKeysServer, serve_apikeys
from palisade.auth.config import AuthSettings
from palisade.auth.server import AuthServer, serve_auth
from palisade.auth.store import AuthStore, outbox, users
from palisade.common.caller import AssertionSigner
from palisade.common.clock import ManualClock
from palisade.common.crypto_client import CryptoClient
from palisade.common.edge_keys import KeyDocument, KeySource, read_document
from palisade.common.errors import ERROR_CODE_METADATA_KEY
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade.crypto.config import CryptoSettings
from palisade.crypto.server import serve_crypto
from palisade_api.apikeys.v1 import apikeys_pb2 as kpb
from palisade_api.apikeys.v1 import apikeys_pb2_grpc
from palisade_api.auth.v1 import auth_pb2 as pb
from palisade_api.auth.v1 import auth_pb2_grpc, team_pb2_grpc

from .test_key_revocation_support import free_port

PASSWORD = "correct horse battery staple"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


def code_of(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(ERROR_CODE_METADATA_KEY)


async def refusal(call: Any) -> tuple[grpc.StatusCode, str | None]:
    """(status, stable code) of a call that must fail."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), code_of(error)
    raise AssertionError("the call succeeded")


@dataclass
class Person:
    email: str
    user_id: str
    tokens: pb.TokenResponse
    grant: pb.ValidateAccessTokenResponse

    @property
    def workspace_id(self) -> str:
        return self.grant.workspace_id


@dataclass
class World:
    clock: ManualClock
    master: KeyDocument
    data_dir: Path
    auth_db: str
    crypto_port: int
    apikeys_port: int
    auth: AuthServer
    auth_stub: auth_pb2_grpc.AuthServiceStub
    team_stub: team_pb2_grpc.TeamServiceStub
    channel: grpc.aio.Channel  # to auth, signing per call: for the other services' stubs
    signing: DeferredSigning
    apikeys_signing: DeferredSigning
    exits: AsyncExitStack
    settings: AuthSettings
    crypto_exit: AsyncExitStack | None = None
    apikeys: ApiKeysServer | None = None
    apikeys_stub: apikeys_pb2_grpc.ApiKeysServiceStub | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def engine(self) -> AsyncEngine:
        return self.auth.engine

    @property
    def crypto_target(self) -> str:
        return f"127.0.0.1:{self.crypto_port}"

    def store(self) -> AuthStore:
        return AuthStore(engine=self.engine)

    # -- crypto, stopped and started at will ------------------------------------------------

    async def start_crypto(self) -> None:
        assert self.crypto_exit is None
        exits = AsyncExitStack()
        await exits.__aenter__()
        await exits.enter_async_context(
            serve_crypto(
                CryptoSettings(
                    data_dir=self.data_dir,
                    database_url=f"sqlite+aiosqlite:///{self.data_dir / 'crypto.db'}",
                    grpc_port=self.crypto_port,
                    metrics_port=0,
                    usage_sync_seconds=3600,
                    shutdown_grace_seconds=0,
                ),
                clock=self.clock,
            )
        )
        self.crypto_exit = exits

    async def stop_crypto(self) -> None:
        assert self.crypto_exit is not None
        await self.crypto_exit.aclose()
        self.crypto_exit = None

    def crypto_as_auth(self) -> CryptoClient:
        """A crypto client signing as auth (auth's own data: its associated data)."""
        signer = AssertionSigner(
            keys=KeySource.from_master(self.master, "auth"), clock=self.clock, ttl_seconds=60
        )
        channel = insecure_channel(self.crypto_target)
        self.exits.push_async_callback(channel.close, None)
        return CryptoClient(channel=channel, identity=ServiceIdentity(name="auth", signer=signer))

    # -- the gateway's side -----------------------------------------------------------------

    def anonymous(self, ip: str = "203.0.113.7") -> tuple[tuple[str, str], ...]:
        return self.signing.marker(
            "gateway", principal="anonymous", client_ip=ip, user_agent=USER_AGENT
        )

    def gateway(self) -> tuple[tuple[str, str], ...]:
        return self.signing.marker("gateway")

    def as_user(
        self, grant: pb.ValidateAccessTokenResponse, ip: str = "203.0.113.7"
    ) -> tuple[tuple[str, str], ...]:
        return self.signing.marker(
            "gateway",
            principal=f"user:{grant.user_id}",
            workspace_id=grant.workspace_id,
            session_id=grant.session_id,
            client_ip=ip,
            user_agent=USER_AGENT,
        )

    def key_owner(self, person: Person) -> tuple[tuple[str, str], ...]:
        """The gateway speaking to apikeys for a freshly signed-in owner."""
        return self.apikeys_signing.marker(
            "gateway",
            principal=f"user:{person.user_id}",
            workspace_id=person.workspace_id,
            session_id=person.grant.session_id,
            client_ip="203.0.113.7",
            user_agent=USER_AGENT,
            role="owner",
            authenticated_at=int(self.clock.timestamp() - 5),
        )

    async def sign_up(self, email: str, name: str = "Ada Lovelace") -> str:
        """A user whose address is verified; returns the id."""
        answer = await self.auth_stub.SignUp(
            pb.SignUpRequest(email=email, password=PASSWORD, name=name),
            metadata=self.anonymous(),
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                update(users)
                .where(users.c.id == answer.user_id)
                .values(email_verified_at=self.clock.now())
            )
        return answer.user_id

    async def login(
        self, email: str, password: str = PASSWORD, ip: str = "203.0.113.7"
    ) -> pb.TokenResponse:
        return await self.auth_stub.Login(
            pb.LoginRequest(email=email, password=password), metadata=self.anonymous(ip)
        )

    async def validate(self, access_token: str) -> pb.ValidateAccessTokenResponse:
        return await self.auth_stub.ValidateAccessToken(
            pb.ValidateAccessTokenRequest(access_token=access_token), metadata=self.gateway()
        )

    async def person(self, email: str | None = None, name: str = "Ada Lovelace") -> Person:
        email = email or f"ada-{uuid.uuid4().hex[:10]}@example.com"
        user_id = await self.sign_up(email, name)
        tokens = await self.login(email)
        return Person(email, user_id, tokens, await self.validate(tokens.access_token))

    async def signed_in_again(self, person: Person) -> Person:
        tokens = await self.login(person.email)
        return Person(
            person.email, person.user_id, tokens, await self.validate(tokens.access_token)
        )

    async def delete(self, person: Person) -> pb.DeleteAccountResponse:
        return await self.auth_stub.DeleteAccount(
            pb.DeleteAccountRequest(), metadata=self.as_user(person.grant)
        )

    async def create_key(self, person: Person) -> kpb.CreatedApiKey:
        assert self.apikeys_stub is not None
        return await self.apikeys_stub.CreateApiKey(
            kpb.CreateApiKeyRequest(name="Server key", type="secret", scopes=["chats:read"]),
            metadata=self.key_owner(person),
        )

    async def key_revoked(self, key_id: str) -> str | None:
        """The key's revocation reason in apikeys' database (None: live)."""
        assert self.apikeys is not None
        from sqlalchemy import text

        async with self.apikeys.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT revoke_reason FROM api_keys WHERE id = :id"), {"id": key_id}
                )
            ).first()
        assert row is not None
        return row[0]

    async def events(self, event_type: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(outbox.c.payload)
                .where(outbox.c.event_type == event_type)
                .order_by(outbox.c.id)
            )
            return [json.loads(r.payload) for r in rows]


@asynccontextmanager
async def start_world(
    tmp_path: Path,
    database: Callable[[str], str],
    *,
    with_apikeys: bool = True,
    **auth_overrides: Any,
) -> AsyncIterator[World]:
    """crypto (restartable), auth on `database("auth")`, and (with_apikeys) apikeys."""
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    crypto_port, apikeys_port = free_port(), free_port()
    async with AsyncExitStack() as exits:
        world_box: list[World] = []

        async def stop_all() -> None:
            if world_box and world_box[0].crypto_exit is not None:
                await world_box[0].stop_crypto()

        exits.push_async_callback(stop_all)
        # Crypto first (it writes the embedded default's key files), in its own exit stack.
        crypto_exit = AsyncExitStack()
        await crypto_exit.__aenter__()
        await crypto_exit.enter_async_context(
            serve_crypto(
                CryptoSettings(
                    data_dir=tmp_path,
                    database_url=f"sqlite+aiosqlite:///{tmp_path / 'crypto.db'}",
                    grpc_port=crypto_port,
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

        values: dict[str, Any] = {
            "data_dir": tmp_path,
            "database_url": database("auth"),
            "redis_url": None,
            "crypto_target": f"127.0.0.1:{crypto_port}",
            "apikeys_target": f"127.0.0.1:{apikeys_port}",
            "grpc_port": 0,
            "metrics_port": 0,
            "shutdown_grace_seconds": 0,
            "hashing_threads": 2,
            "key_revocation_poll_seconds": 60,
            "subject_shred_poll_seconds": 60,
            "subject_migration_on_start": False,
        }
        values.update(auth_overrides)
        settings = AuthSettings(**values)
        auth = await exits.enter_async_context(serve_auth(settings, clock=clock))
        signing = DeferredSigning(audience="auth", signer_for=signer_for)
        channel = await exits.enter_async_context(signing.channel(auth.running.target))
        world = World(
            clock=clock,
            master=master,
            data_dir=tmp_path,
            auth_db=settings.database_url or "",
            crypto_port=crypto_port,
            apikeys_port=apikeys_port,
            auth=auth,
            auth_stub=auth_pb2_grpc.AuthServiceStub(channel),
            team_stub=team_pb2_grpc.TeamServiceStub(channel),
            channel=channel,
            signing=signing,
            apikeys_signing=DeferredSigning(audience="apikeys", signer_for=signer_for),
            exits=exits,
            settings=settings,
            crypto_exit=crypto_exit,
        )
        world_box.append(world)
        if with_apikeys:
            world.apikeys = await exits.enter_async_context(
                serve_apikeys(
                    ApiKeysSettings(
                        data_dir=tmp_path,
                        database_url=database("apikeys"),
                        crypto_target=world.crypto_target,
                        auth_target=auth.running.target,
                        grpc_port=apikeys_port,
                        metrics_port=0,
                        shutdown_grace_seconds=0,
                    ),
                    clock=clock,
                    relay_notices=False,
                )
            )
            keys_channel = await exits.enter_async_context(
                world.apikeys_signing.channel(f"127.0.0.1:{apikeys_port}")
            )
            world.apikeys_stub = apikeys_pb2_grpc.ApiKeysServiceStub(keys_channel)
        yield world
