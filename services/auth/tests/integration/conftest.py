from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from deferred_signing import DeferredSigning
from sqlalchemy import func, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from palisade.auth.config import AuthSettings
from palisade.auth.server import AuthServer, serve_auth
from palisade.auth.store import users
from palisade.common.caller import AssertionSigner
from palisade.common.clock import ManualClock
from palisade.common.edge_keys import KeyDocument, KeySource, read_document
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
    master: KeyDocument  # every edge's keys (the embedded default's master file)
    signing: DeferredSigning
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

    def signer(self, issuer: str = "gateway") -> AssertionSigner:
        """Signs as `issuer` with only that service's keys (what its own key file holds)."""
        keys = KeySource.from_master(self.master, issuer)
        return AssertionSigner(keys=keys, clock=self.clock, ttl_seconds=60)

    # Markers: the test channel signs each call for the method it is sent to (an assertion is
    # bound to its method and accepted once), so these may be reused like real metadata.
    def anonymous(self, ip: str = "203.0.113.7", user_agent: str = USER_AGENT):
        return self.signing.marker(
            "gateway", principal="anonymous", client_ip=ip, user_agent=user_agent
        )

    def as_user(self, grant: pb.ValidateAccessTokenResponse, ip: str = "203.0.113.7"):
        return self.signing.marker(
            "gateway",
            principal=f"user:{grant.user_id}",
            workspace_id=grant.workspace_id,
            session_id=grant.session_id,
            client_ip=ip,
            user_agent=USER_AGENT,
        )

    def gateway_service(self):
        return self.signing.marker("gateway")

    async def sign_up(
        self,
        email: str,
        password: str = PASSWORD,
        name: str = "Ada Lovelace",
        *,
        verified: bool = True,
    ):
        """Signs up; the address is then marked verified (verified=False: left unverified,
        so TOTP and passkey enrolment are refused, accounts/restrictions.py)."""
        answer = await self.stub.SignUp(
            pb.SignUpRequest(email=email, password=password, name=name),
            metadata=self.anonymous(),
        )
        if verified:
            # A taken address answers with a decoy id that names no row: nothing is updated.
            await self.verify_email(answer.user_id, must_exist=False)
        return answer

    async def verify_email(self, user_id: str, *, must_exist: bool = True) -> None:
        """Marks the account's address verified, as proving it by an emailed link does.

        A direct database update: the emailed link is tested in test_email_verification.py, and
        these tests are about what a verified (or unverified) account may do, not how it got
        so. Call it before logging in: proving an address ends the sessions created before the
        proof, so a session that exists already keeps its unverified restrictions."""
        # Through SQLAlchemy: the harness's database is Postgres or SQLite (auth_db_url).
        engine = create_async_engine(self.auth_db_url)
        try:
            async with engine.begin() as conn:
                updated = await conn.execute(
                    update(users)
                    .where(users.c.id == user_id)
                    .values(
                        email_verified_at=func.coalesce(users.c.email_verified_at, self.clock.now())
                    )
                )
        finally:
            await engine.dispose()
        assert updated.rowcount == 1 or not must_exist, f"no user {user_id}"

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
        """A blocking connection to auth's database, for a test to look or arrange rows.

        Used on the loop that runs the auth server, a write that waits for a row lock one of
        the server's coroutines holds can never be granted: write from asyncio.to_thread. As a
        net, such a wait fails after lock_timeout with a clear "lock timeout" error instead of
        hanging the test until pytest-timeout."""
        url = make_url(self.auth_db_url).set(drivername="postgresql")
        return psycopg.connect(
            url.render_as_string(hide_password=False),
            autocommit=True,
            options="-c lock_timeout=15000",
        )

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
            # Tests that run on both backends pass their own (e.g. the database_url fixture's).
            auth_db_url = str(overrides.pop("database_url", postgres_url))
            async with AsyncExitStack() as stack:
                crypto = await stack.enter_async_context(serve_crypto(crypto_settings, clock=clock))
                settings = auth_settings(
                    tmp_path,
                    auth_db_url,
                    redis_url if use_redis else None,
                    crypto.running.grpc_port,
                    **overrides,
                )
                servers, stubs = [], []
                master = read_document(settings.resolved_edge_keys_master_file())
                signing = DeferredSigning(
                    audience="auth",
                    signer_for=lambda issuer: AssertionSigner(
                        keys=KeySource.from_master(master, issuer), clock=clock, ttl_seconds=60
                    ),
                )
                for _ in range(replicas):
                    server = await stack.enter_async_context(serve_auth(settings, clock=clock))
                    channel = await stack.enter_async_context(
                        signing.channel(server.running.target)
                    )
                    servers.append(server)
                    stubs.append(auth_pb2_grpc.AuthServiceStub(channel))
                yield AuthHarness(
                    servers,
                    stubs,
                    clock,
                    master,
                    signing,
                    auth_db_url,
                    settings,
                    crypto_server=crypto,
                )

        return running()

    return start


@pytest.fixture
async def auth(auth_factory) -> AsyncIterator[AuthHarness]:
    async with auth_factory() as harness:
        yield harness
