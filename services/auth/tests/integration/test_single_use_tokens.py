"""The single-use token core (links/single_use.py), on SQLite and on real Postgres.

Expiry is tested by moving the injectable clock, never by sleeping. The race runs 20 parallel
redemptions, each in its own transaction on its own connection, and expects one winner. The
generic table here (a purpose column, `consumed_at`) is the shape future purposes will share;
magic links run the same core on their own purpose-specific table (the last tests).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Column, LargeBinary, MetaData, String, Table, insert, select

from palisade.auth.errors import InvalidToken, WrongTokenType
from palisade.auth.links.single_use import (
    Purpose,
    RedeemedToken,
    SingleUseTokens,
    TokenTable,
)
from palisade.auth.links.tables import MAGIC_LINK, MAGIC_LINK_TABLE, magic_links
from palisade.auth.sessions.tokens import TokenKind
from palisade.auth.store import MIGRATIONS_PACKAGE, AuthStore, users
from palisade.common.clock import ManualClock
from palisade.common.db import UTCDateTime, create_engine
from palisade.common.migrations import upgrade

TS = UTCDateTime()
test_metadata = MetaData()
tokens_table = Table(
    "single_use_tokens",
    test_metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("purpose", String(32), nullable=False),
    Column("user_id", String(40), nullable=False, index=True),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("consumed_at", TS, nullable=True),
)
TABLE = TokenTable(tokens_table)
# Two purposes whose tokens look alike (same prefix): only the purpose column tells them apart.
RESET = Purpose("password_reset", TokenKind.MAGIC_LINK)
VERIFY = Purpose("email_verification", TokenKind.MAGIC_LINK)
HOUR = timedelta(hours=1)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AuthStore]:
    engine = create_engine(database_url, pool_size=25)
    async with engine.begin() as conn:
        await conn.run_sync(test_metadata.create_all)
    yield AuthStore(engine=engine)
    await engine.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


def core(clock: ManualClock, purpose: Purpose = RESET) -> SingleUseTokens:
    return SingleUseTokens(table=TABLE, purpose=purpose, clock=clock)


async def _issue(
    store: AuthStore, tokens: SingleUseTokens, user_id: str, *, retire: bool = False
) -> str:
    async with store.transaction() as tx:
        issued = await tokens.issue(tx, user_id=user_id, lifetime=HOUR, retire_siblings=retire)
    return issued.token


async def _redeem(
    store: AuthStore, tokens: SingleUseTokens, token: str, *, retire: bool = True
) -> RedeemedToken | None:
    async with store.transaction() as tx:
        return await tokens.redeem(tx, token, retire_siblings=retire)


async def _rows(store: AuthStore) -> list[dict[str, object]]:
    async with store.transaction() as tx:
        result = await tx.conn.execute(select(tokens_table))
        return [dict(row._mapping) for row in result]


async def test_a_token_is_redeemed_once(store: AuthStore, clock: ManualClock) -> None:
    tokens = core(clock)
    token = await _issue(store, tokens, "usr_1")
    redeemed = await _redeem(store, tokens, token)
    assert redeemed == RedeemedToken("usr_1", clock.now())
    assert await _redeem(store, tokens, token) is None
    [row] = await _rows(store)
    assert row["consumed_at"] == clock.now()


async def test_only_the_hash_is_stored(store: AuthStore, clock: ManualClock) -> None:
    tokens = core(clock)
    async with store.transaction() as tx:
        issued = await tokens.issue(tx, user_id="usr_1", lifetime=HOUR, retire_siblings=False)
    assert issued.expires_at == clock.now() + HOUR
    token = issued.token
    assert token.startswith(TokenKind.MAGIC_LINK.value)
    assert len(token) - len(TokenKind.MAGIC_LINK.value) == 43  # 32 bytes, base64url
    [row] = await _rows(store)
    assert row["token_hash"] == hashlib.sha256(token.encode()).digest()
    body = token[len(TokenKind.MAGIC_LINK.value) :]
    for value in row.values():
        assert not (isinstance(value, str) and body in value)
        assert not (isinstance(value, bytes) and body.encode() in value)


async def test_tokens_are_fresh_each_time(store: AuthStore, clock: ManualClock) -> None:
    tokens = core(clock)
    issued = {await _issue(store, tokens, "usr_1") for _ in range(20)}
    assert len(issued) == 20


async def test_an_expired_token_is_refused(store: AuthStore, clock: ManualClock) -> None:
    tokens = core(clock)
    token = await _issue(store, tokens, "usr_1")
    clock.advance(HOUR)  # expires_at > now: at the expiry instant it is already dead
    assert await _redeem(store, tokens, token) is None
    clock.advance(-1)
    assert await _redeem(store, tokens, token) is not None


async def test_a_token_of_another_purpose_is_refused(store: AuthStore, clock: ManualClock) -> None:
    reset, verify = core(clock, RESET), core(clock, VERIFY)
    token = await _issue(store, reset, "usr_1")
    assert await _redeem(store, verify, token) is None  # the purpose column decides
    assert await _redeem(store, reset, token) is not None  # and the refusal used nothing up


async def test_a_token_with_another_prefix_is_refused_before_any_lookup(
    store: AuthStore, clock: ManualClock
) -> None:
    other_kind = core(clock, Purpose("password_reset", TokenKind.MFA))
    token = await _issue(store, core(clock), "usr_1")
    with pytest.raises(WrongTokenType):
        await _redeem(store, other_kind, token)
    with pytest.raises(InvalidToken):
        await _redeem(store, core(clock), token + "x")
    assert await _redeem(store, core(clock), token) is not None


async def test_redeeming_retires_the_users_siblings_of_that_purpose(
    store: AuthStore, clock: ManualClock
) -> None:
    reset, verify = core(clock, RESET), core(clock, VERIFY)
    first, second = await _issue(store, reset, "usr_1"), await _issue(store, reset, "usr_1")
    other_user = await _issue(store, reset, "usr_2")
    other_purpose = await _issue(store, verify, "usr_1")
    assert await _redeem(store, reset, first) is not None
    assert await _redeem(store, reset, second) is None
    assert await _redeem(store, reset, other_user) is not None
    assert await _redeem(store, verify, other_purpose) is not None


async def test_redeeming_without_retiring_leaves_siblings(
    store: AuthStore, clock: ManualClock
) -> None:
    tokens = core(clock)
    first, second = await _issue(store, tokens, "usr_1"), await _issue(store, tokens, "usr_1")
    assert await _redeem(store, tokens, first, retire=False) is not None
    assert await _redeem(store, tokens, second, retire=False) is not None


async def test_issuing_can_retire_the_users_outstanding_tokens(
    store: AuthStore, clock: ManualClock
) -> None:
    reset, verify = core(clock, RESET), core(clock, VERIFY)
    old = await _issue(store, reset, "usr_1")
    kept = await _issue(store, verify, "usr_1")
    new = await _issue(store, reset, "usr_1", retire=True)
    assert await _redeem(store, reset, old) is None
    assert await _redeem(store, reset, new) is not None
    assert await _redeem(store, verify, kept) is not None


async def test_retire_ends_every_outstanding_token_of_the_purpose(
    store: AuthStore, clock: ManualClock
) -> None:
    reset, verify = core(clock, RESET), core(clock, VERIFY)
    tokens = [await _issue(store, reset, "usr_1") for _ in range(3)]
    kept = await _issue(store, verify, "usr_1")
    async with store.transaction() as tx:
        await reset.retire(tx, "usr_1")
    for token in tokens:
        assert await _redeem(store, reset, token) is None
    assert await _redeem(store, verify, kept) is not None


async def test_a_redemption_that_rolls_back_leaves_the_token_usable(
    store: AuthStore, clock: ManualClock
) -> None:
    tokens = core(clock)
    token = await _issue(store, tokens, "usr_1")

    async def redeem_then_fail() -> None:
        async with store.transaction() as tx:
            assert await tokens.redeem(tx, token, retire_siblings=True) is not None
            raise RuntimeError("what the token unlocks failed")

    with pytest.raises(RuntimeError):
        await redeem_then_fail()
    assert await _redeem(store, tokens, token) is not None


async def test_parallel_redemptions_have_exactly_one_winner(
    store: AuthStore, clock: ManualClock
) -> None:
    tokens = core(clock)
    token = await _issue(store, tokens, "usr_1")
    sibling = await _issue(store, tokens, "usr_1")
    results = await asyncio.gather(*(_redeem(store, tokens, token) for _ in range(20)))
    assert [r for r in results if r is not None] == [RedeemedToken("usr_1", clock.now())]
    assert await _redeem(store, tokens, sibling) is None  # the winner retired it


async def test_parallel_redemptions_of_siblings_have_exactly_one_winner(
    store: AuthStore, clock: ManualClock
) -> None:
    """Twenty links of one user redeemed at once: one sign-in per email round."""
    tokens = core(clock)
    links = [await _issue(store, tokens, "usr_1") for _ in range(20)]
    results = await asyncio.gather(*(_redeem(store, tokens, t) for t in links))
    assert sum(r is not None for r in results) == 1


def test_a_one_purpose_table_serves_only_its_purpose(clock: ManualClock) -> None:
    with pytest.raises(ValueError):
        SingleUseTokens(table=MAGIC_LINK_TABLE, purpose=RESET, clock=clock)
    with pytest.raises(ValueError):
        TokenTable(tokens_table, only_purpose="password_reset")  # has a purpose column too
    with pytest.raises(ValueError):
        TokenTable(magic_links, consumed_column="used_at", purpose_column=None)


# -- the same core on the magic_links table (migrated schema) -----------------------------------


@pytest.fixture
async def auth_store(database_url: str) -> AsyncIterator[AuthStore]:
    engine = create_engine(database_url, pool_size=25)
    await upgrade(engine, MIGRATIONS_PACKAGE)
    yield AuthStore(engine=engine)
    await engine.dispose()


async def _user(store: AuthStore, clock: ManualClock) -> str:
    user_id = f"usr_{uuid.uuid4().hex}"
    async with store.transaction() as tx:
        await tx.conn.execute(
            insert(users).values(
                id=user_id,
                email_index=uuid.uuid4().hex,
                email_ct=b"ct",
                name_ct=b"ct",
                password_hash="x",
                created_at=clock.now(),
                password_changed_at=clock.now(),
            )
        )
    return user_id


async def test_magic_links_use_the_core_on_their_own_table(
    auth_store: AuthStore, clock: ManualClock
) -> None:
    links = SingleUseTokens(table=MAGIC_LINK_TABLE, purpose=MAGIC_LINK, clock=clock)
    user_id = await _user(auth_store, clock)
    async with auth_store.transaction() as tx:
        first = await links.issue(
            tx,
            user_id=user_id,
            lifetime=timedelta(minutes=15),
            retire_siblings=False,
            values={"requested_ip": "203.0.113.7"},
        )
        second = await links.issue(
            tx, user_id=user_id, lifetime=timedelta(minutes=15), retire_siblings=False
        )
    assert first.token.startswith("plsd_ml_")
    results = await asyncio.gather(*(_redeem(auth_store, links, first.token) for _ in range(20)))
    assert sum(r is not None for r in results) == 1
    assert await _redeem(auth_store, links, second.token) is None  # retired by the winner
    async with auth_store.transaction() as tx:
        rows = (await tx.conn.execute(select(magic_links))).all()
    assert {bytes(r.token_hash) for r in rows} == {
        hashlib.sha256(t.encode()).digest() for t in (first.token, second.token)
    }
    assert all(r.used_at == clock.now() for r in rows)
    assert {r.requested_ip for r in rows} == {"203.0.113.7", None}


async def test_an_expired_magic_link_is_refused(auth_store: AuthStore, clock: ManualClock) -> None:
    links = SingleUseTokens(table=MAGIC_LINK_TABLE, purpose=MAGIC_LINK, clock=clock)
    user_id = await _user(auth_store, clock)
    async with auth_store.transaction() as tx:
        issued = await links.issue(
            tx, user_id=user_id, lifetime=timedelta(minutes=15), retire_siblings=False
        )
    clock.advance(timedelta(minutes=15))
    assert await _redeem(auth_store, links, issued.token) is None
