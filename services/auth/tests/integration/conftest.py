from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from palisade.auth.config import AuthSettings
from palisade.auth.server import AuthServer, serve_auth
from palisade.common.caller import AssertionSigner, Keyset, load_keyset
from palisade.common.clock import ManualClock
from palisade.common.grpc_client import insecure_channel
from palisade.crypto.config import CryptoSettings
from palisade.crypto.server import serve_crypto
from palisade_api.auth.v1 import auth_pb2 as pb
from palisade_api.auth.v1 import auth_pb2_grpc

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

PASSWORD = "correct horse battery staple"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


@dataclass
class AuthHarness:
    """A running crypto + auth pair, and the gateway's side of the conversation."""

    servers: list[AuthServer]
    stubs: list[auth_pb2_grpc.AuthServiceStub]
    clock: ManualClock
    keyset: Keyset
    auth_db_url: str
    settings: AuthSettings
    crypto_server: object = None
    extra: dict[str, object] = field(default_factory=dict)

    async def crypto_stop(self) -> None:
        """Stops the crypto service's gRPC server (the auth service's dependency)."""
        await self.crypto_server.running.server.stop(0)  # type: ignore[attr-defined]

    @property
    def stub(self) -> auth_pb2_grpc.AuthServiceStub:
        return self.stubs[0]

    def _signer(self) -> AssertionSigner:
        return AssertionSigner(
            keyset=self.keyset, issuer="gateway", clock=self.clock, ttl_seconds=60
        )

    def anonymous(self, ip: str = "203.0.113.7", user_agent: str = USER_AGENT):
        token = self._signer().sign(
            audience="auth",
            principal="anonymous",
            request_id=uuid.uuid4().hex,
            client_ip=ip,
            user_agent=user_agent,
        )
        return (("x-palisade-caller", token),)

    def as_user(self, grant: pb.ValidateAccessTokenResponse, ip: str = "203.0.113.7"):
        token = self._signer().sign(
            audience="auth",
            principal=f"user:{grant.user_id}",
            request_id=uuid.uuid4().hex,
            workspace_id=grant.workspace_id,
            session_id=grant.session_id,
            client_ip=ip,
            user_agent=USER_AGENT,
        )
        return (("x-palisade-caller", token),)

    def gateway_service(self):
        token = self._signer().sign(
            audience="auth", principal="service:gateway", request_id=uuid.uuid4().hex
        )
        return (("x-palisade-caller", token),)

    async def sign_up(self, email: str, password: str = PASSWORD, name: str = "Ada Lovelace"):
        return await self.stub.SignUp(
            pb.SignUpRequest(email=email, password=password, name=name),
            metadata=self.anonymous(),
        )

    async def login(
        self,
        email: str,
        password: str = PASSWORD,
        *,
        remember_me: bool = False,
        ip: str = "203.0.113.7",
        stub=None,
    ) -> pb.TokenResponse:
        return await (stub or self.stub).Login(
            pb.LoginRequest(email=email, password=password, remember_me=remember_me),
            metadata=self.anonymous(ip),
        )

    async def refresh(self, refresh_token: str, stub=None) -> pb.TokenResponse:
        return await (stub or self.stub).Refresh(
            pb.RefreshRequest(refresh_token=refresh_token), metadata=self.anonymous()
        )

    async def validate(self, access_token: str) -> pb.ValidateAccessTokenResponse:
        return await self.stub.ValidateAccessToken(
            pb.ValidateAccessTokenRequest(access_token=access_token),
            metadata=self.gateway_service(),
        )

    def db(self) -> psycopg.Connection:
        url = make_url(self.auth_db_url).set(drivername="postgresql")
        return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)

    def events(self, event_type: str) -> list[str]:
        with self.db() as conn:
            rows = conn.execute(
                "SELECT payload FROM outbox_events WHERE event_type = %s ORDER BY id",
                (event_type,),
            ).fetchall()
        return [r[0] for r in rows]


def auth_settings(
    data_dir: Path, database_url: str, redis_url: str | None, crypto_port: int, **overrides: object
) -> AuthSettings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "redis_url": redis_url,
        "crypto_target": f"127.0.0.1:{crypto_port}",
        "grpc_port": 0,
        "metrics_port": 0,
        "shutdown_grace_seconds": 1,
        "hashing_threads": 2,
    }
    values.update(overrides)
    return AuthSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def auth_factory(tmp_path: Path, postgres_database_factory, postgres_url: str, redis_url: str):
    """Starts crypto plus `replicas` auth servers sharing one database (and Redis)."""

    def start(
        *, replicas: int = 1, use_redis: bool = True, **overrides: object
    ) -> AbstractAsyncContextManager[AuthHarness]:
        @asynccontextmanager
        async def running() -> AsyncIterator[AuthHarness]:
            clock = ManualClock(datetime.now(UTC))
            crypto_settings = CryptoSettings(
                data_dir=tmp_path,
                database_url=postgres_database_factory(),
                grpc_port=0,
                metrics_port=0,
                usage_sync_seconds=3600,
                shutdown_grace_seconds=1,
            )
            async with AsyncExitStack() as stack:
                crypto = await stack.enter_async_context(serve_crypto(crypto_settings, clock=clock))
                settings = auth_settings(
                    tmp_path,
                    postgres_url,
                    redis_url if use_redis else None,
                    crypto.running.grpc_port,
                    **overrides,
                )
                servers, stubs = [], []
                for _ in range(replicas):
                    server = await stack.enter_async_context(serve_auth(settings, clock=clock))
                    channel = await stack.enter_async_context(
                        insecure_channel(server.running.target)
                    )
                    servers.append(server)
                    stubs.append(auth_pb2_grpc.AuthServiceStub(channel))
                keyset = load_keyset(
                    settings.resolved_internal_keys_file(), create_if_missing=False
                )
                yield AuthHarness(
                    servers, stubs, clock, keyset, postgres_url, settings, crypto_server=crypto
                )

        return running()

    return start


@pytest.fixture
async def auth(auth_factory) -> AsyncIterator[AuthHarness]:
    async with auth_factory() as harness:
        yield harness
