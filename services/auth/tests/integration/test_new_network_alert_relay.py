"""The new-network alert relay (sessions/new_network_alerts.py) on SQLite and Postgres: crypto
down delays an alert and loses nothing; two relays racing send it once; an alert for an
account disabled meanwhile is dropped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.auth.links.tables import account_tokens
from palisade.auth.local_keys import LocalKeys
from palisade.auth.mail import OutgoingEmail, SealedEmail
from palisade.auth.sessions.geo import NullLocator
from palisade.auth.sessions.new_network_alerts import NewNetworkAlertRelay, NotMePolicy
from palisade.auth.sessions.new_networks import new_network_alerts, observe_sign_in
from palisade.auth.store import MIGRATIONS_PACKAGE, AuthStore, AuthTransaction, users
from palisade.common.clock import ManualClock
from palisade.common.db import create_engine
from palisade.common.errors import Unavailable
from palisade.common.migrations import upgrade

KEYS = LocalKeys(bytes(range(32)))


@dataclass
class FakeCrypto:
    """Decrypts the sealed address as itself; `down` makes every call fail like an outage."""

    down: bool = False
    calls: int = 0

    async def decrypt(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        self.calls += 1
        if self.down:
            raise Unavailable()
        return [ciphertext for ciphertext, _ in items]


@dataclass
class FakeMail:
    queued: list[OutgoingEmail] = field(default_factory=list)
    sealed: dict[str, OutgoingEmail] = field(default_factory=dict)

    async def seal_many(self, emails: Sequence[OutgoingEmail]) -> list[SealedEmail | None]:
        out: list[SealedEmail | None] = []
        for email in emails:
            sealed = SealedEmail(f"mail_{uuid.uuid4().hex}", b"")
            self.sealed[sealed.id] = email
            out.append(sealed)
        return out

    async def enqueue(self, tx: AuthTransaction, sealed: SealedEmail) -> None:
        self.queued.append(self.sealed[sealed.id])

    def notify(self) -> None:
        pass


@dataclass
class Env:
    engine: AsyncEngine
    store: AuthStore
    clock: ManualClock
    crypto: FakeCrypto
    mail: FakeMail

    def relay(self) -> NewNetworkAlertRelay:
        return NewNetworkAlertRelay(
            engine=self.engine,
            store=self.store,
            crypto=self.crypto,  # type: ignore[arg-type]
            mail=self.mail,  # type: ignore[arg-type]
            locator=NullLocator(),
            policy=NotMePolicy(public_base_url="http://localhost:8080", link_seconds=7 * 86400),
            clock=self.clock,
        )

    async def user_with_alert(self) -> str:
        user_id = f"usr_{uuid.uuid4().hex}"
        now = self.clock.now()
        async with self.store.transaction() as tx:
            await tx.insert_user(
                user_id=user_id,
                email_index=f"bi1.1.{uuid.uuid4().hex}",
                email_ct=b"ada@example.com",
                name_ct=b"Ada",
                password_hash="x",
                now=now,
            )
        for ip in ("203.0.113.7", "198.51.100.1"):  # a baseline, then a new network
            async with self.store.transaction() as tx:
                await observe_sign_in(
                    tx,
                    KEYS,
                    user_id=user_id,
                    workspace_id="ws_" + "0" * 32,
                    ip=ip,
                    device="Firefox 120 on Linux",
                    method="password+totp",
                    session_id=f"ses_{uuid.uuid4().hex}",
                    now=now,
                )
        return user_id

    async def count(self, query) -> int:  # type: ignore[no-untyped-def]
        async with self.store.transaction() as tx:
            return int((await tx.conn.execute(query)).scalar_one())


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    engine = create_engine(database_url, pool_size=12)
    try:
        await upgrade(engine, MIGRATIONS_PACKAGE)
        yield Env(
            engine,
            AuthStore(engine=engine),
            ManualClock(datetime(2026, 12, 3, 12, tzinfo=UTC)),
            FakeCrypto(),
            FakeMail(),
        )
    finally:
        await engine.dispose()


PENDING = select(func.count()).select_from(new_network_alerts)
NOT_ME_LINKS = (
    select(func.count()).select_from(account_tokens).where(account_tokens.c.purpose == "not_me")
)


async def test_crypto_down_delays_the_alert_and_loses_nothing(env: Env) -> None:
    await env.user_with_alert()
    relay = env.relay()
    env.crypto.down = True
    assert await relay.run_once() == 0
    assert await env.count(PENDING) == 1  # kept, with a retry time ahead
    assert env.mail.queued == []
    assert await env.count(NOT_ME_LINKS) == 0
    # Not due again before its backoff.
    env.crypto.down = False
    calls = env.crypto.calls
    assert await relay.run_once() == 0
    assert env.crypto.calls == calls
    env.clock.advance(timedelta(seconds=5))
    assert await relay.run_once() == 1
    assert await env.count(PENDING) == 0
    [email] = env.mail.queued
    assert email.to == "ada@example.com"
    assert "198.51.100.1" in email.text
    assert "password and authenticator code" in email.text
    assert "/auth/not-me?token=plsd_nm_" in email.text
    assert await env.count(NOT_ME_LINKS) == 1
    assert await relay.run_once() == 0  # sent once


async def test_two_relays_racing_send_one_alert(env: Env) -> None:
    for _ in range(5):
        await env.user_with_alert()
    relays = [env.relay(), env.relay(), env.relay()]
    sent = await asyncio.gather(*(r.run_once() for r in relays))
    assert sum(sent) == 5
    assert len(env.mail.queued) == 5
    assert await env.count(NOT_ME_LINKS) == 5
    assert await env.count(PENDING) == 0


async def test_an_alert_for_a_disabled_account_is_dropped(env: Env) -> None:
    user_id = await env.user_with_alert()
    async with env.store.transaction() as tx:
        await tx.conn.execute(
            update(users).where(users.c.id == user_id).values(disabled_at=env.clock.now())
        )
    assert await env.relay().run_once() == 0
    assert await env.count(PENDING) == 0
    assert env.mail.queued == []
