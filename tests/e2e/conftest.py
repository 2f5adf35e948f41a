"""The whole suite (crypto, auth, audit, apikeys, visitors, webhooks, gateway) on free ports,
reached over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from ports import port_for_later
from smtp_catcher import SmtpCatcher, serve_smtp_catcher

from palisade.apikeys.config import ApiKeysSettings
from palisade.apikeys.server import serve_apikeys
from palisade.audit.config import AuditSettings
from palisade.audit.server import AuditServer, serve_audit
from palisade.auth.config import AuthSettings
from palisade.auth.server import serve_auth
from palisade.common.clock import ManualClock
from palisade.crypto.config import CryptoSettings
from palisade.crypto.server import serve_crypto
from palisade.gateway.config import GatewaySettings
from palisade.gateway.server import GatewayServer, serve_gateway
from palisade.visitors.config import VisitorsSettings
from palisade.visitors.server import serve_visitors
from palisade.webhooks.config import WebhooksSettings
from palisade.webhooks.server import WebhooksServer, serve_webhooks

PASSWORD = "correct horse battery staple"
# The relying party and origin the soft authenticator speaks for (the auth service's default).
PASSKEY_ORIGIN = "http://localhost:8080"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[SmtpCatcher, int]]:
    """Served on the test's own event loop, so the catcher's Event wakes the test directly."""
    async with serve_smtp_catcher() as served:
        yield served


@dataclass
class Suite:
    gateway: GatewayServer
    http: aiohttp.ClientSession
    clock: ManualClock
    gateway_settings: GatewaySettings
    mail: SmtpCatcher = field(default_factory=SmtpCatcher)
    auth_database_url: str = ""
    apikeys_database_url: str = ""
    # Who signed up through sign_up(), by email: for verify_email().
    user_ids: dict[str, str] = field(default_factory=dict)
    # Where crypto listens and whose keys are where: for operator commands run in a test.
    crypto_target: str = ""
    data_dir: Path | None = None
    # The security log the suite's services forward their events to.
    audit: AuditServer | None = None
    audit_database_url: str = ""
    # The visitors service's database (visitors, chats, messages, its outbox).
    visitors_database_url: str = ""
    # The webhooks service (endpoints, secrets, deliveries) and its database.
    webhooks: WebhooksServer | None = None
    webhooks_database_url: str = ""
    # Stops the crypto service (for outage tests); the rest of the suite keeps running.
    stop_crypto: Callable[[], Awaitable[None]] | None = None

    def auth_database_dump(self) -> bytes:
        """Every row of every auth table, as bytes: for "no plaintext at rest" checks."""
        return database_dump(self.auth_database_url)

    def apikeys_database_dump(self) -> bytes:
        return database_dump(self.apikeys_database_url)

    def visitors_database_dump(self) -> bytes:
        return database_dump(self.visitors_database_url)

    def visitors_row_count(self) -> int:
        """Rows of the visitors table (blocking: call through asyncio.to_thread)."""
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(self.visitors_database_url).set(drivername="postgresql")
        with psycopg.connect(url.render_as_string(hide_password=False)) as conn:
            row = conn.execute("SELECT count(*) FROM visitors").fetchone()
        assert row is not None
        return int(row[0])

    async def json_call(self, method: str, path: str, **kwargs):
        """(status, parsed JSON body or None, headers)."""
        import json as _json

        status, headers, body = await self.call(method, path, **kwargs)
        return status, (_json.loads(body) if body else None), headers

    def url(self, path: str) -> str:
        return self.gateway.base_url + path

    async def call(
        self,
        method: str,
        path: str,
        *,
        json=None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        data=None,
    ):
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(
            method, self.url(path), json=json, data=data, headers=all_headers
        ) as response:
            body = await response.read()
            return response.status, response.headers.copy(), body  # case-insensitive

    async def sign_up(self, email: str, *, verified: bool = True) -> str:
        """Signs up over HTTP and returns the user id; the address is then marked verified
        (verified=False: left unverified, so the routes of accounts/restrictions.py refuse)."""
        status, body, _ = await self.json_call(
            "POST", "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Ada"}
        )
        assert status == 201, body
        # A second sign-up on a taken address answers alike with a decoy id: keep the first.
        self.user_ids.setdefault(email, body["userId"])
        if verified:
            await self.verify_email(email)
        return self.user_ids[email]

    async def verify_email(self, email: str) -> None:
        """Marks the address of an account made by sign_up() verified, as proving it by an
        emailed link does.

        A direct database update: the emailed link is tested where it is built, and these tests
        are about what a verified (or unverified) account may do, not how it got so. Log in
        afterwards: proving an address ends the sessions created before the proof, so a
        session that exists already keeps its unverified restrictions (and the gateway may
        have cached them with its token)."""
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(self.auth_database_url).set(drivername="postgresql")
        async with await psycopg.AsyncConnection.connect(
            url.render_as_string(hide_password=False), autocommit=True
        ) as conn:
            updated = await conn.execute(
                "UPDATE users SET email_verified_at = COALESCE(email_verified_at, %s)"
                " WHERE id = %s",
                (self.clock.now(), self.user_ids[email]),
            )
            assert updated.rowcount == 1, f"no user signed up as {email}"

    async def log_in(self, email: str) -> dict:
        status, body, _ = await self.json_call(
            "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert status == 200, body
        return dict(body)

    async def sign_up_and_log_in(self, email: str, *, verified: bool = True) -> dict:
        await self.sign_up(email, verified=verified)
        return await self.log_in(email)


def database_dump(database_url: str) -> bytes:
    """Every row of every table of a Postgres database, as bytes."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(database_url).set(drivername="postgresql")
    dump = bytearray()
    with psycopg.connect(url.render_as_string(hide_password=False)) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        for (table,) in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"').fetchall():
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        dump += bytes(value)
                    elif value is not None:
                        dump += str(value).encode()
                    dump += b"\x00"
    return bytes(dump)


@pytest.fixture
def auth_overrides() -> dict[str, object]:
    """Extra AuthSettings for the suite's auth service; a test module overrides this fixture."""
    return {}


@pytest.fixture
def webhooks_overrides() -> dict[str, object]:
    """Extra WebhooksSettings (e.g. allowed_networks for a local receiver); a test module
    overrides this fixture. By default only public https receivers are allowed, as in
    production, and names are never resolved by a test that gives none."""
    return {}


@pytest.fixture
async def suite(
    tmp_path: Path,
    postgres_database_factory,
    redis_url: str,
    smtp,
    auth_overrides: dict[str, object],
    webhooks_overrides: dict[str, object],
) -> AsyncIterator[Suite]:
    catcher, smtp_port = smtp
    clock = ManualClock(datetime.now(UTC))
    common = {"data_dir": tmp_path, "grpc_port": 0, "metrics_port": 0, "shutdown_grace_seconds": 1}
    async with AsyncExitStack() as stack:
        # In a stack of its own, so a test can stop crypto alone (closed again, a no-op, at the
        # end).
        crypto_stack = AsyncExitStack()
        stack.push_async_callback(crypto_stack.aclose)
        crypto = await crypto_stack.enter_async_context(
            serve_crypto(
                CryptoSettings(
                    **common, database_url=postgres_database_factory(), usage_sync_seconds=3600
                ),
                clock=clock,
            )
        )
        auth_database_url = postgres_database_factory()
        # Auth starts first but calls apikeys (key revocations) and audit (its events): their
        # ports are chosen now.
        apikeys_port = _free_port()
        audit_port = _free_port()
        auth = await stack.enter_async_context(
            serve_auth(
                AuthSettings(
                    **common,
                    database_url=auth_database_url,
                    redis_url=redis_url,
                    crypto_target=crypto.running.target,
                    hashing_threads=2,
                    smtp_host="127.0.0.1",
                    smtp_port=smtp_port,
                    smtp_security="none",
                    apikeys_target=f"127.0.0.1:{apikeys_port}",
                    audit_target=f"127.0.0.1:{audit_port}",
                    audit_poll_seconds=0.1,
                    **auth_overrides,
                ),
                clock=clock,
            )
        )
        audit_database_url = postgres_database_factory()
        audit = await stack.enter_async_context(
            serve_audit(
                AuditSettings(
                    **{**common, "grpc_port": audit_port},
                    database_url=audit_database_url,
                    crypto_target=crypto.running.target,
                    auth_target=auth.running.target,
                    stream_poll_seconds=0.1,
                ),
                clock=clock,
            )
        )
        apikeys_database_url = postgres_database_factory()
        apikeys = await stack.enter_async_context(
            serve_apikeys(
                ApiKeysSettings(
                    **{**common, "grpc_port": apikeys_port},
                    database_url=apikeys_database_url,
                    redis_url=redis_url,
                    crypto_target=crypto.running.target,
                    auth_target=auth.running.target,
                    audit_target=audit.running.target,
                    audit_poll_seconds=0.1,
                    notice_poll_seconds=0.05,
                ),
                clock=clock,
            )
        )
        visitors_database_url = postgres_database_factory()
        visitors = await stack.enter_async_context(
            serve_visitors(
                VisitorsSettings(
                    **common,
                    database_url=visitors_database_url,
                    crypto_target=crypto.running.target,
                    audit_target=audit.running.target,
                    audit_poll_seconds=0.1,
                ),
                clock=clock,
            )
        )
        webhooks_database_url = postgres_database_factory()
        webhooks = await stack.enter_async_context(
            serve_webhooks(
                WebhooksSettings(
                    **common,
                    database_url=webhooks_database_url,
                    crypto_target=crypto.running.target,
                    audit_target=audit.running.target,
                    auth_target=auth.running.target,
                    audit_poll_seconds=0.1,
                    worker_poll_seconds=0.1,
                    **webhooks_overrides,
                ),
                clock=clock,
            )
        )
        gateway_settings = GatewaySettings(
            data_dir=tmp_path,
            http_port=0,
            metrics_port=0,
            auth_target=auth.running.target,
            apikeys_target=apikeys.running.target,
            audit_target=audit.running.target,
            visitors_target=visitors.running.target,
            webhooks_target=webhooks.running.target,
            redis_url=redis_url,
            max_body_bytes=16 * 1024,
            shutdown_grace_seconds=1,
        )
        gateway = await stack.enter_async_context(serve_gateway(gateway_settings, clock=clock))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        suite = Suite(
            gateway,
            http,
            clock,
            gateway_settings,
            catcher,
            auth_database_url,
            apikeys_database_url,
        )
        suite.crypto_target, suite.data_dir = crypto.running.target, tmp_path
        suite.audit, suite.audit_database_url = audit, audit_database_url
        suite.visitors_database_url = visitors_database_url
        suite.webhooks, suite.webhooks_database_url = webhooks, webhooks_database_url
        suite.stop_crypto = crypto_stack.aclose
        await wait_for_feeds(gateway)
        yield suite


def _free_port() -> int:
    """A port for a service started later (ports.port_for_later)."""
    return port_for_later()


async def wait_for_feeds(gateway: GatewayServer) -> None:
    """Readiness, not timing: the gateway caches tokens and keys only once it follows both
    revocation feeds."""
    for _ in range(500):
        if gateway.edge.feed_connected and gateway.keys.feed_connected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the gateway never connected to the revocation feeds")
