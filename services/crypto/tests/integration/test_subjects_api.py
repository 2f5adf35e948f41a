"""Crypto-shredding over real gRPC, on SQLite and Postgres: subject keys, ShredSubject, copies
and older versions of the data, replicas, rewrap and retire, the CLI, and what a dump holds."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import replace

import grpc
import pytest
from sqlalchemy import MetaData, event, select

from palisade.common.aad import associated_data
from palisade.common.errors import ERROR_CODE_METADATA_KEY
from palisade.crypto.subject_store import DatabaseSubjectStore, subject_keys
from palisade.crypto.subjects import SHREDDER_OF_KIND, unwrap_secret
from palisade_api.crypto.v1 import crypto_pb2 as pb

from .conftest import CryptoHarness, crypto_settings, running_crypto

ADA = "user:usr_0123456789abcdef0123456789abcdef"
BOB = "user:usr_fedcba9876543210fedcba9876543210"
VISITOR = "visitor:vis_7f3a"


def _aad(record: str, field: str = "email") -> bytes:
    return associated_data("visitors", "ws_1", record, field)


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(ERROR_CODE_METADATA_KEY)


@pytest.fixture
async def crypto(tmp_path, database_url):
    async with running_crypto(crypto_settings(tmp_path, database_url)) as harness:
        yield harness


async def _encrypt(
    crypto: CryptoHarness, items: list[tuple[bytes, bytes, str]]
) -> pb.EncryptResponse:
    return await crypto.stub.Encrypt(
        pb.EncryptRequest(
            items=[pb.EncryptItem(plaintext=p, associated_data=a, subject=s) for p, a, s in items]
        ),
        metadata=crypto.metadata(),
    )


async def _decrypt(
    crypto: CryptoHarness, items: list[tuple[bytes, bytes]], *, tolerate: bool = False
) -> pb.DecryptResponse:
    return await crypto.stub.Decrypt(
        pb.DecryptRequest(
            items=[pb.DecryptItem(ciphertext=c, associated_data=a) for c, a in items],
            tolerate_erased=tolerate,
        ),
        metadata=crypto.metadata(),
    )


async def _shred(crypto: CryptoHarness, subject: str, service: str | None = None) -> bool:
    """ShredSubject as `service`, by default the one that owns the subject's kind."""
    owner = service or SHREDDER_OF_KIND.get(subject.partition(":")[0], "visitors")
    reply = await crypto.stub.ShredSubject(
        pb.ShredSubjectRequest(subject=subject), metadata=crypto.metadata(owner)
    )
    return reply.shredded


async def _refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def _rows(crypto: CryptoHarness) -> list:
    async with crypto.server.engine.connect() as conn:
        return list((await conn.execute(select(subject_keys))).all())


def _rotate(crypto: CryptoHarness) -> None:
    crypto.clock.advance(60)
    crypto.server.keyring.update(lambda k: replace(k, data=k.data.rotated(crypto.clock.now())))


# -- sealing and opening ----------------------------------------------------------------------


async def test_round_trip_with_subjects_and_what_binds_them(crypto) -> None:
    sealed = await _encrypt(
        crypto,
        [
            (b"ada@example.com", _aad("v_1"), ADA),
            (b"Bob", _aad("v_2"), BOB),
            (b"x", _aad("v_3"), ""),
        ],
    )
    ada, bob, plain = sealed.ciphertexts
    assert (ada[0], bob[0], plain[0]) == (2, 2, 1)
    opened = await _decrypt(crypto, [(ada, _aad("v_1")), (bob, _aad("v_2")), (plain, _aad("v_3"))])
    assert list(opened.plaintexts) == [b"ada@example.com", b"Bob", b"x"]
    assert list(opened.erased) == []  # only filled in when tolerate_erased was asked for

    moved = await _refused(_decrypt(crypto, [(ada, _aad("v_2"))]))
    assert moved.code() == grpc.StatusCode.DATA_LOSS
    assert _code(moved) == "ciphertext_tampered"
    # Relabelled as Bob's: Bob's key id in Ada's envelope.
    relabelled = ada[:5] + bob[5:21] + ada[21:]
    error = await _refused(_decrypt(crypto, [(relabelled, _aad("v_1"))]))
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert _code(error) == "ciphertext_tampered"
    unknown = await _refused(_decrypt(crypto, [(ada[:5] + bytes(16) + ada[21:], _aad("v_1"))]))
    assert (unknown.code(), _code(unknown)) == (grpc.StatusCode.NOT_FOUND, "unknown_subject_key")
    assert "ada@example.com" not in (error.details() or "")


async def test_invalid_subjects_are_invalid_argument_and_write_nothing(crypto) -> None:
    for bad in ("usr_1", "root:x", "user:a b", "user:" + "a" * 200, "user:é"):
        error = await _refused(
            _encrypt(crypto, [(b"x", _aad("v_1"), ""), (b"x", _aad("v_1"), bad)])
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(error) == "invalid_subject"
        assert (error.details() or "").startswith("item 1: ")
        error = await _refused(_shred(crypto, bad))
        assert (error.code(), _code(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_subject")
    assert await _rows(crypto) == []


async def test_only_services_may_shred(crypto) -> None:
    """A person's principal delegated by the gateway (a test-only gateway->crypto edge) is
    refused, validly signed or not."""
    error = await _refused(
        crypto.stub.ShredSubject(
            pb.ShredSubjectRequest(subject=ADA),
            metadata=crypto.metadata("gateway", principal="user:usr_1"),
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await _rows(crypto) == []


# -- shredding --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "owner"),
    [(ADA, "auth"), (VISITOR, "visitors"), ("apikey:key_0123456789abcdef", "apikeys")],
)
async def test_only_the_owner_of_a_subjects_kind_may_shred_it(crypto, subject, owner) -> None:
    """Encrypt may name any subject, ShredSubject only the owning service's: a compromised or
    buggy webhooks (or apikeys, or audit) cannot destroy a visitor's or a person's PII."""
    await crypto.stub.Encrypt(
        pb.EncryptRequest(
            items=[pb.EncryptItem(plaintext=b"x", associated_data=_aad("r_1"), subject=subject)]
        ),
        metadata=crypto.metadata(),
    )
    for other in sorted({"auth", "visitors", "apikeys", "audit", "webhooks"} - {owner}):
        error = await _refused(_shred(crypto, subject, service=other))
        assert (error.code(), _code(error)) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "subject_not_owned",
        ), other
    [row] = await _rows(crypto)
    assert row.shredded_at is None
    assert await _shred(crypto, subject, service=owner) is True


async def test_shred_erases_every_copy_and_version_and_nothing_else(crypto) -> None:
    v1 = await _encrypt(crypto, [(b"Ada", _aad("v_1", "name"), ADA), (b"a@x.io", _aad("v_1"), ADA)])
    _rotate(crypto)
    v2 = await _encrypt(crypto, [(b"note", _aad("v_1", "note"), ADA)])
    assert v2.key_version == 2
    other = await _encrypt(crypto, [(b"Bob", _aad("v_2"), BOB), (b"plain", _aad("v_3"), "")])
    ada = [
        (v1.ciphertexts[0], _aad("v_1", "name")),
        (v1.ciphertexts[1], _aad("v_1")),
        (bytes(v1.ciphertexts[1]), _aad("v_1")),  # a copy (an outbox, a mail queue, a backup)
        (v2.ciphertexts[0], _aad("v_1", "note")),
    ]
    rest = [(other.ciphertexts[0], _aad("v_2")), (other.ciphertexts[1], _aad("v_3"))]

    assert await _shred(crypto, ADA, service="auth") is True
    for envelope in ada:
        error = await _refused(_decrypt(crypto, [*rest, envelope]))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _code(error) == "subject_erased"
        assert (error.details() or "").startswith("item 2: ")
    assert list((await _decrypt(crypto, rest)).plaintexts) == [b"Bob", b"plain"]

    mixed = await _decrypt(crypto, [rest[0], ada[0], rest[1], ada[3]], tolerate=True)
    assert list(mixed.plaintexts) == [b"Bob", b"", b"plain", b""]
    assert list(mixed.erased) == [False, True, False, True]

    assert await _shred(crypto, ADA) is False  # idempotent
    error = await _refused(_encrypt(crypto, [(b"again", _aad("v_9"), ADA)]))
    assert (error.code(), _code(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "subject_erased")
    [row] = [r for r in await _rows(crypto) if r.subject == ADA]
    assert row.wrapped_secret is None  # never a new secret

    registry = crypto.server.registry
    assert registry.get_sample_value("palisade_crypto_subject_encryptions_total") == 4
    shreds = "palisade_crypto_subject_shreds_total"
    assert registry.get_sample_value(shreds, {"outcome": "shredded"}) == 1
    assert registry.get_sample_value(shreds, {"outcome": "already_shredded"}) == 1
    erased = registry.get_sample_value(
        "palisade_crypto_items_total", {"operation": "decrypt", "outcome": "erased"}
    )
    assert erased == 2


async def test_a_subject_shredded_before_it_had_data(crypto) -> None:
    assert await _shred(crypto, VISITOR) is True
    error = await _refused(_encrypt(crypto, [(b"x", _aad("v_1"), VISITOR)]))
    assert _code(error) == "subject_erased"
    assert await _shred(crypto, VISITOR) is False


async def test_parallel_first_encryptions_of_a_subject_converge(crypto) -> None:
    calls = [_encrypt(crypto, [(f"{i}".encode(), _aad(f"v_{i}"), ADA)]) for i in range(24)]
    replies = await asyncio.gather(*calls)
    assert len({r.ciphertexts[0][5:21] for r in replies}) == 1
    [row] = await _rows(crypto)
    assert row.subject == ADA
    opened = await _decrypt(
        crypto, [(r.ciphertexts[0], _aad(f"v_{i}")) for i, r in enumerate(replies)]
    )
    assert list(opened.plaintexts) == [f"{i}".encode() for i in range(24)]


async def test_two_replicas_race_and_a_shred_reaches_the_other_at_once(tmp_path, database_url):
    settings = crypto_settings(tmp_path, database_url)
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(running_crypto(settings))
        two = await stack.enter_async_context(running_crypto(settings))
        replies = await asyncio.gather(
            *(
                _encrypt(replica, [(b"x", _aad(f"v_{i}"), BOB)])
                for i in range(12)
                for replica in (one, two)
            )
        )
        assert len({r.ciphertexts[0][5:21] for r in replies}) == 1
        sealed = replies[0].ciphertexts[0]
        assert list((await _decrypt(two, [(sealed, _aad("v_0"))])).plaintexts) == [b"x"]
        assert await _shred(one, BOB) is True
        # No cache anywhere: the very next call on the other replica sees it.
        error = await _refused(_decrypt(two, [(sealed, _aad("v_0"))]))
        assert _code(error) == "subject_erased"
        error = await _refused(_encrypt(two, [(b"x", _aad("v_0"), BOB)]))
        assert _code(error) == "subject_erased"


# -- rotation, rewrap, retire (the CLI) -------------------------------------------------------


def _cli(crypto: CryptoHarness, *args: str, database_url: str | None = None):
    env = {
        **os.environ,
        "PALISADE_DATA_DIR": str(crypto.settings.data_dir),
        "PALISADE_CRYPTO_DATABASE_URL": database_url or str(crypto.settings.database_url),
    }
    return subprocess.run(
        [sys.executable, "-m", "palisade.crypto", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _until(predicate, limit_seconds: float = 10.0) -> None:
    """Waits for the server's own keyring watcher (another task, on its own timer)."""
    deadline = time.monotonic() + limit_seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_rotate_rewrap_and_retire_with_subject_ciphertexts(crypto) -> None:
    old = await _encrypt(crypto, [(b"Ada", _aad("v_1"), ADA), (b"Vis", _aad("v_2"), VISITOR)])
    assert old.key_version == 1
    rotated = await asyncio.to_thread(_cli, crypto, "keys", "rotate")
    assert rotated.returncode == 0
    await _until(lambda: crypto.server.keyring.current.data.primary == 2)

    items = [
        pb.DecryptItem(ciphertext=old.ciphertexts[0], associated_data=_aad("v_1")),
        pb.DecryptItem(ciphertext=old.ciphertexts[1], associated_data=_aad("v_2")),
    ]
    rewrapped = await crypto.stub.Rewrap(
        pb.RewrapRequest(items=items[:1]), metadata=crypto.metadata()
    )
    assert rewrapped.key_version == 2
    assert list(rewrapped.rewrapped) == [True]
    moved = rewrapped.ciphertexts[0]
    assert moved[:1] == b"\x02"
    assert moved[1:5] == b"\x00\x00\x00\x02"
    assert moved[5:21] == old.ciphertexts[0][5:21]  # the same subject
    # The visitor's data stays under v1 (nobody rewrapped it), its secret too.
    assert {r.subject: r.wrap_version for r in await _rows(crypto)} == {ADA: 2, VISITOR: 1}

    retired = await asyncio.to_thread(_cli, crypto, "keys", "retire", "--below", "2")
    assert retired.returncode == 0, retired.stderr
    assert "moved 1 subject secret(s) to data key v2" in retired.stdout
    assert {r.subject: r.wrap_version for r in await _rows(crypto)} == {ADA: 2, VISITOR: 2}
    await _until(lambda: crypto.server.keyring.current.data.min_version == 2)

    assert list((await _decrypt(crypto, [(moved, _aad("v_1"))])).plaintexts) == [b"Ada"]
    error = await _refused(_decrypt(crypto, [(old.ciphertexts[1], _aad("v_2"))]))
    assert _code(error) == "retired_key_version"  # its data was not rewrapped: gone with v1
    # The visitor is still usable (its secret was moved before the retire).
    fresh = await _encrypt(crypto, [(b"new", _aad("v_2"), VISITOR)])
    assert list((await _decrypt(crypto, [(fresh.ciphertexts[0], _aad("v_2"))])).plaintexts) == [
        b"new"
    ]
    # Rewrapped data still belongs to its subject.
    assert await _shred(crypto, ADA) is True
    error = await _refused(_decrypt(crypto, [(moved, _aad("v_1"))]))
    assert _code(error) == "subject_erased"
    error = await _refused(
        crypto.stub.Rewrap(
            pb.RewrapRequest(items=[pb.DecryptItem(ciphertext=moved, associated_data=_aad("v_1"))]),
            metadata=crypto.metadata(),
        )
    )
    assert (error.code(), _code(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "subject_erased")


async def test_retire_is_refused_while_the_database_is_unreachable(crypto) -> None:
    await _encrypt(crypto, [(b"Ada", _aad("v_1"), ADA)])
    assert (await asyncio.to_thread(_cli, crypto, "keys", "rotate")).returncode == 0
    out = await asyncio.to_thread(
        _cli,
        crypto,
        "keys",
        "retire",
        "--below",
        "2",
        database_url="postgresql://postgres@127.0.0.1:1/nowhere",
    )
    assert out.returncode == 3
    assert "unreachable" in out.stderr
    assert crypto.server.keyring.current.data.min_version == 1
    raw = crypto.settings.resolved_keyring_file().read_bytes()
    assert b'"min_version": 1' in raw


async def test_cli_subjects_shred(crypto) -> None:
    sealed = await _encrypt(crypto, [(b"Vis", _aad("v_1"), VISITOR)])
    bad = await asyncio.to_thread(_cli, crypto, "subjects", "shred", "visitor:vis 1")
    assert bad.returncode == 1
    assert "refused" in bad.stderr
    done = await asyncio.to_thread(_cli, crypto, "subjects", "shred", VISITOR)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("shredded")
    assert "vis_7f3a" not in done.stdout + done.stderr  # the log line names the key id only
    again = await asyncio.to_thread(_cli, crypto, "subjects", "shred", VISITOR)
    assert again.returncode == 0
    assert again.stdout.startswith("already shredded")
    error = await _refused(_decrypt(crypto, [(sealed.ciphertexts[0], _aad("v_1"))]))
    assert _code(error) == "subject_erased"
    down = await asyncio.to_thread(
        _cli,
        crypto,
        "subjects",
        "shred",
        ADA,
        database_url="postgresql://postgres@127.0.0.1:1/nowhere",
    )
    assert down.returncode == 1
    assert "nothing was shredded" in down.stderr


# -- what the database holds, and how often it is asked ---------------------------------------


async def test_a_database_dump_holds_no_raw_secret_or_key(crypto) -> None:
    await _encrypt(crypto, [(b"Ada", _aad("v_1"), ADA), (b"Bob", _aad("v_2"), BOB)])
    keyring = crypto.server.keyring.current
    store = DatabaseSubjectStore(engine=crypto.server.engine)
    records = await store.by_subjects([ADA, BOB])
    secrets = [unwrap_secret(keyring.data, r).secret for r in records.values()]
    ada_wrapped = records[ADA].wrapped_secret
    assert ada_wrapped is not None

    async def dump() -> bytes:
        out = bytearray()
        tables = MetaData()
        async with crypto.server.engine.connect() as conn:
            await conn.run_sync(tables.reflect)
            for table in tables.sorted_tables:
                for row in (await conn.execute(select(table))).all():
                    for value in row:
                        out += value if isinstance(value, bytes) else repr(value).encode()
                        out += b"\x00"
        return bytes(out)

    raw = await dump()
    assert ada_wrapped in raw  # the dump is complete: wrapped secrets are in it
    forbidden = [*secrets, *(k.key for k in keyring.data.keys.values())]
    for secret in forbidden:
        for form in (secret, secret.hex().encode(), base64.b64encode(secret).rstrip(b"=")):
            assert form not in raw
    await _shred(crypto, ADA)
    assert ada_wrapped not in await dump()


async def test_a_batch_of_one_subject_costs_one_subject_read(crypto) -> None:
    await _encrypt(crypto, [(b"warm", _aad("v_0"), ADA)])  # the subject's secret exists
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:
        if "subject_keys" in statement:
            statements.append(statement)

    event.listen(crypto.server.engine.sync_engine, "before_cursor_execute", seen)
    # On Postgres the subject reads are direct reads, on the driver's own connections.
    reads = crypto.server.reads
    postgres = crypto.server.engine.dialect.name == "postgresql"
    assert (reads._pool is not None) == postgres
    original_fetch = reads._fetch

    async def counted_fetch(sql, params, first_only):
        if "subject_keys" in sql:
            statements.append(sql)
        return await original_fetch(sql, params, first_only)

    reads._fetch = counted_fetch
    items = [(f"{i}@example.com".encode(), _aad(f"v_{i}"), ADA) for i in range(100)]
    sealed = await _encrypt(crypto, items)
    assert len(statements) == 1
    pairs = [(c, a) for c, (_, a, _) in zip(sealed.ciphertexts, items, strict=True)]
    opened = await _decrypt(crypto, pairs)
    assert list(opened.plaintexts) == [p for p, _, _ in items]
    assert len(statements) == 2
    await _decrypt(crypto, pairs, tolerate=True)
    assert len(statements) == 3
    assert all(s.lstrip().upper().startswith("SELECT") for s in statements)
