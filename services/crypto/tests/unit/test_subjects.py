"""Crypto-shredding in the domain: subject keys, format 2 envelopes, shredding, on SQLite."""

from __future__ import annotations

import asyncio
import struct

import grpc
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import event, select, update

from palisade.common.aad import associated_data
from palisade.common.errors import InvalidArgument
from palisade.crypto.envelope import (
    FORMAT_SUBJECT,
    IV_BYTES,
    SUBJECT_HEADER_BYTES,
    TAG_BYTES,
    parse,
)
from palisade.crypto.errors import (
    InvalidSubject,
    RetiredKeyVersion,
    SubjectErased,
    TamperedCiphertext,
    UnknownSubjectKey,
)
from palisade.crypto.subject_store import subject_keys
from palisade.crypto.subjects import (
    SubjectSecret,
    check_subject,
    move_secrets_forward,
    unwrap_secret,
)

ADA = "user:usr_0123456789abcdef0123456789abcdef"
BOB = "user:usr_fedcba9876543210fedcba9876543210"
VISITOR = "visitor:vis_1"
SECRET = b"ada@example.com"


def _aad(record: str = "v_1", field: str = "email") -> bytes:
    return associated_data("visitors", "ws_1", record, field)


async def _row(crypto, subject: str):
    async with crypto.subjects._engine.connect() as conn:  # the test's own SQLite file
        return (
            await conn.execute(select(subject_keys).where(subject_keys.c.subject == subject))
        ).one_or_none()


async def _secret(crypto, subject: str) -> SubjectSecret:
    [record] = (await crypto.subjects.by_subjects([subject])).values()
    return unwrap_secret(crypto.keyring.data, record)


def _subject_statements(engine) -> list[str]:
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        if "subject_keys" in statement:
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    return seen


# -- subject strings --------------------------------------------------------------------------


@pytest.mark.parametrize("subject", [ADA, VISITOR, "apikey:key_AbC-09", "user:" + "a" * 123])
def test_valid_subjects(subject):
    assert check_subject(subject) == subject


@pytest.mark.parametrize(
    "subject",
    [
        "usr_1",  # no kind
        "user:",  # no id
        "admin:usr_1",  # unknown kind
        "User:usr_1",  # kinds are lower-case
        "user:usr 1",
        "user:usr_1\n",
        "user:usr_1/2",
        "user:usr_ı",  # not ASCII (a dotless i)
        "user:usr_１",  # a full-width digit (\d would take it)
        "user:" + "a" * 124,  # 129 characters
        " user:usr_1",
    ],
)
def test_invalid_subjects_are_refused(subject):
    with pytest.raises(InvalidSubject) as info:
        check_subject(subject)
    assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.code == "invalid_subject"


# -- the subject envelope -------------------------------------------------------------------


async def test_round_trip_and_documented_layout_and_key_derivation(crypto):
    (sealed,), version = await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    assert version == 1
    row = await _row(crypto, ADA)
    secret = await _secret(crypto, ADA)
    assert sealed[0] == FORMAT_SUBJECT == 2
    assert sealed[1:5] == struct.pack(">I", 1)
    assert sealed[5:21] == row.key_id == secret.key_id
    assert len(sealed) == SUBJECT_HEADER_BYTES + IV_BYTES + len(SECRET) + TAG_BYTES
    # An independent computation of the documented key and GCM associated data.
    subject = ADA.encode()
    info = b"palisade-crypto/subject-data-key/v1" + struct.pack(">I", len(subject))
    info += subject + row.key_id
    data_key = crypto.keyring.data.keys[1].key
    derived = HKDF(SHA256(), 32, salt=secret.secret, info=info).derive(data_key)
    iv = sealed[21:37]
    assert AESGCM(derived).decrypt(iv, sealed[37:], sealed[:21] + _aad()) == SECRET
    # Domain separation: the data key itself does not open it, nor does the derived key
    # without the header bound.
    with pytest.raises(InvalidTag):
        AESGCM(data_key).decrypt(iv, sealed[37:], sealed[:21] + _aad())
    with pytest.raises(InvalidTag):
        AESGCM(derived).decrypt(iv, sealed[37:], _aad())
    assert await crypto.service.decrypt([(sealed, _aad())]) == [SECRET]


async def test_format_1_envelopes_are_untouched_and_mix_with_subject_ones(crypto):
    items = [(SECRET, _aad("v_1")), (b"Ada", _aad("v_2")), (b"Bob", _aad("v_3"))]
    sealed, _ = await crypto.service.encrypt(items, ["", ADA, BOB])
    assert [c[0] for c in sealed] == [1, 2, 2]
    assert sealed[1][5:21] != sealed[2][5:21]  # one key id per subject
    opened = await crypto.service.decrypt([(c, a) for c, (_, a) in zip(sealed, items, strict=True)])
    assert opened == [SECRET, b"Ada", b"Bob"]
    (plain,), _ = await crypto.service.encrypt([(SECRET, _aad())])
    assert plain[0] == 1
    assert len(plain) == 5 + 16 + len(SECRET) + 16


async def test_one_subject_has_one_key_id_and_one_secret(crypto):
    first, _ = await crypto.service.encrypt([(SECRET, _aad())] * 3, [ADA] * 3)
    second, _ = await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    assert len({c[5:21] for c in first + second}) == 1
    assert len({c[21:37] for c in first + second}) == 4  # fresh IVs
    async with crypto.subjects._engine.connect() as conn:
        assert len((await conn.execute(select(subject_keys))).all()) == 1


async def test_associated_data_mismatch_fails(crypto):
    (sealed,), _ = await crypto.service.encrypt([(SECRET, _aad("v_1"))], [ADA])
    with pytest.raises(TamperedCiphertext) as info:
        await crypto.service.decrypt([(sealed, _aad("v_2"))])
    assert info.value.message.startswith("item 0: ")


async def test_relabelled_to_another_subject_fails(crypto):
    (ada,), _ = await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    (bob,), _ = await crypto.service.encrypt([(SECRET, _aad())], [BOB])
    relabelled = ada[:5] + bob[5:21] + ada[21:]
    with pytest.raises(TamperedCiphertext):
        await crypto.service.decrypt([(relabelled, _aad())])
    # ...even with Bob's secret and key id bound in a key forged for the relabelled header:
    # Ada's ciphertext was sealed under Ada's key, which only Ada's secret derives.
    assert await crypto.service.decrypt([(bob, _aad())]) == [SECRET]


async def test_an_unknown_key_id_is_not_found(crypto):
    (sealed,), _ = await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    forged = sealed[:5] + b"\x00" * 16 + sealed[21:]
    with pytest.raises(UnknownSubjectKey) as info:
        await crypto.service.decrypt([(forged, _aad())])
    assert info.value.status == grpc.StatusCode.NOT_FOUND


async def test_invalid_subjects_fail_the_batch_naming_the_item_before_any_write(crypto):
    with pytest.raises(InvalidSubject) as info:
        await crypto.service.encrypt([(SECRET, _aad())] * 3, [ADA, "", "root"])
    assert info.value.message.startswith("item 2: ")
    assert await _row(crypto, ADA) is None
    assert crypto.usage.total(1) == 0
    assert crypto.outcome("encrypt", "invalid_subject") == 1


async def test_a_server_without_subject_keys_refuses_subjects(make_crypto):
    crypto = make_crypto(subjects=False)
    with pytest.raises(InvalidArgument):
        await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    with pytest.raises(InvalidArgument):
        await crypto.service.shred_subject(ADA, actor="auth")
    assert (await crypto.service.encrypt([(SECRET, _aad())], [""]))[1] == 1


# -- shredding --------------------------------------------------------------------------------


async def test_shred_makes_every_ciphertext_of_the_subject_fail_and_only_its(crypto):
    ada_v1, _ = await crypto.service.encrypt(
        [(SECRET, _aad("v_1")), (b"Ada", _aad("v_2"))], [ADA] * 2
    )
    crypto.rotate_data()
    (ada_v2,), version = await crypto.service.encrypt([(b"x", _aad("v_3"))], [ADA])
    assert version == 2
    (bob,), _ = await crypto.service.encrypt([(b"Bob", _aad("v_4"))], [BOB])
    copy = bytes(ada_v1[0])  # e.g. the same envelope in an outbox or a backup

    assert await crypto.service.shred_subject(ADA, actor="auth") is True
    for envelope, aad in (
        (ada_v1[0], _aad("v_1")),
        (copy, _aad("v_1")),
        (ada_v1[1], _aad("v_2")),
        (ada_v2, _aad("v_3")),
    ):
        with pytest.raises(SubjectErased) as info:
            await crypto.service.decrypt([(bob, _aad("v_4")), (envelope, aad)])
        assert info.value.status == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.code == "subject_erased"
        assert info.value.message == "item 1: the data subject has been erased"
    assert await crypto.service.decrypt([(bob, _aad("v_4"))]) == [b"Bob"]
    # Erased wins over every other verdict: even garbage associated data answers erased.
    with pytest.raises(SubjectErased):
        await crypto.service.decrypt([(ada_v2, _aad("elsewhere"))])
    assert crypto.outcome("decrypt", "subject_erased") == 5


async def test_erased_even_under_a_version_since_retired(crypto):
    (old,), _ = await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    crypto.rotate_data()
    await crypto.service.shred_subject(ADA, actor="auth")
    crypto.retire_data_below(2)
    with pytest.raises(SubjectErased):
        await crypto.service.decrypt([(old, _aad())])


async def test_the_secret_is_overwritten_and_a_tombstone_kept(crypto):
    await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    before = await _row(crypto, ADA)
    crypto.clock.advance(30)
    await crypto.service.shred_subject(ADA, actor="auth")
    after = await _row(crypto, ADA)
    assert before.wrapped_secret is not None
    assert before.shredded_at is None
    assert after.wrapped_secret is None
    assert after.wrap_version is None
    assert after.key_id == before.key_id
    assert after.created_at == before.created_at
    assert after.shredded_at == crypto.clock.now()


async def test_shred_is_idempotent_and_encrypting_afterwards_is_refused(crypto):
    await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    assert await crypto.service.shred_subject(ADA, actor="auth") is True
    assert await crypto.service.shred_subject(ADA, actor="auth") is False
    with pytest.raises(SubjectErased) as info:
        await crypto.service.encrypt([(SECRET, _aad()), (SECRET, _aad())], ["", ADA])
    assert info.value.message.startswith("item 1: ")
    assert crypto.usage.total(1) == 1  # the refused batch spent nothing
    # Never a new secret: the row is still the tombstone.
    assert (await _row(crypto, ADA)).wrapped_secret is None
    assert crypto.sample("palisade_crypto_subject_shreds_total", outcome="shredded") == 1
    assert crypto.sample("palisade_crypto_subject_shreds_total", outcome="already_shredded") == 1


async def test_a_subject_shredded_before_any_data_stays_erased(crypto):
    assert await crypto.service.shred_subject(VISITOR, actor="visitors") is True
    assert (await _row(crypto, VISITOR)).shredded_at is not None
    with pytest.raises(SubjectErased):
        await crypto.service.encrypt([(SECRET, _aad())], [VISITOR])
    assert await crypto.service.shred_subject(VISITOR, actor="visitors") is False


async def test_shred_refuses_a_malformed_subject(crypto):
    with pytest.raises(InvalidSubject):
        await crypto.service.shred_subject("user:../../etc", actor="auth")


async def test_tolerating_erased_items(crypto):
    items = [(b"a", _aad("v_1")), (b"b", _aad("v_2")), (b"c", _aad("v_3"))]
    sealed, _ = await crypto.service.encrypt(items, [ADA, "", BOB])
    await crypto.service.shred_subject(ADA, actor="auth")
    pairs = [(c, a) for c, (_, a) in zip(sealed, items, strict=True)]
    plaintexts, erased = await crypto.service.decrypt_tolerating_erased(pairs)
    assert plaintexts == [b"", b"b", b"c"]
    assert erased == [True, False, False]
    assert crypto.outcome("decrypt", "erased") == 1
    # Tolerance covers erasure only: a tampered item still fails the batch.
    with pytest.raises(TamperedCiphertext):
        await crypto.service.decrypt_tolerating_erased([*pairs, (sealed[2], _aad("v_1"))])


async def test_shred_log_line_names_no_subject(crypto, caplog):
    await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    row = await _row(crypto, ADA)
    with caplog.at_level("INFO", logger="palisade.crypto.subjects"):
        await crypto.service.shred_subject(ADA, actor="auth")
    [record] = [r for r in caplog.records if r.name == "palisade.crypto.subjects"]
    assert record.event == "subject.shredded"
    assert record.actor == "auth"
    assert record.subject_kind == "user"
    assert record.subject_key_id == row.key_id.hex()
    assert "usr_0123456789abcdef" not in str(vars(record))


# -- convergence ------------------------------------------------------------------------------


async def test_parallel_first_encryptions_converge_on_one_secret(crypto):
    """Concurrent batches racing on a new subject (the gRPC tests race them on Postgres)."""
    results = await asyncio.gather(
        *(crypto.service.encrypt([(SECRET, _aad(f"v_{i}"))], [ADA]) for i in range(16))
    )
    assert len({sealed[0][5:21] for sealed, _ in results}) == 1
    opened = await crypto.service.decrypt(
        [(s[0], _aad(f"v_{i}")) for i, (s, _) in enumerate(results)]
    )
    assert opened == [SECRET] * 16


async def test_a_shred_racing_a_first_encryption_leaves_the_subject_erased(crypto):
    for round_ in range(10):
        subject = f"visitor:vis_{round_}"
        outcome = await asyncio.gather(
            crypto.service.encrypt([(SECRET, _aad())], [subject]),
            crypto.service.shred_subject(subject, actor="visitors"),
            return_exceptions=True,
        )
        assert outcome[1] is True
        assert isinstance(outcome[0], tuple | SubjectErased)
        assert (await _row(crypto, subject)).wrapped_secret is None
        with pytest.raises(SubjectErased):
            await crypto.service.encrypt([(SECRET, _aad())], [subject])


# -- rotation, rewrap, retire -----------------------------------------------------------------


async def test_rewrap_keeps_the_subject_and_moves_its_secret_forward(crypto):
    (old,), _ = await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    (plain,), _ = await crypto.service.encrypt([(b"p", _aad("v_2"))])
    assert (await _row(crypto, ADA)).wrap_version == 1
    crypto.rotate_data()
    (moved, plain_moved), rewrapped, version = await crypto.service.rewrap(
        [(old, _aad()), (plain, _aad("v_2"))]
    )
    assert rewrapped == [True, True]
    assert version == 2
    assert parse(moved) == (2, old[5:21])  # same subject key id, new data-key version
    assert plain_moved[0] == 1
    assert (await _row(crypto, ADA)).wrap_version == 2
    crypto.retire_data_below(2)
    assert await crypto.service.decrypt([(moved, _aad()), (plain_moved, _aad("v_2"))]) == [
        SECRET,
        b"p",
    ]
    with pytest.raises(RetiredKeyVersion):
        await crypto.service.decrypt([(old, _aad())])
    # Still the subject's: shredding reaches the rewrapped copy too.
    await crypto.service.shred_subject(ADA, actor="auth")
    with pytest.raises(SubjectErased):
        await crypto.service.decrypt([(moved, _aad())])
    with pytest.raises(SubjectErased):
        await crypto.service.rewrap([(moved, _aad())])


async def test_encrypting_after_a_rotation_moves_the_secret_forward(crypto):
    await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    crypto.rotate_data()
    (new,), version = await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    assert version == 2
    assert (await _row(crypto, ADA)).wrap_version == 2
    crypto.retire_data_below(2)
    assert await crypto.service.decrypt([(new, _aad())]) == [SECRET]


async def test_a_secret_left_under_a_retired_version_is_reported(crypto, caplog):
    """Retiring without `keys retire` (which moves secrets first) strands the subject: the
    error says why, and the log names the key id."""
    await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    crypto.rotate_data()
    (bob,), _ = await crypto.service.encrypt([(SECRET, _aad("v_2"))], [BOB])  # made under v2
    crypto.retire_data_below(2)
    with pytest.raises(RetiredKeyVersion) as info:
        await crypto.service.encrypt([(SECRET, _aad()), (SECRET, _aad())], [BOB, ADA])
    assert info.value.message.startswith("item 1: ")
    [line] = [
        r for r in caplog.records if r.getMessage() == "a subject's secret cannot be unwrapped"
    ]
    assert line.subject_key_id == (await _row(crypto, ADA)).key_id.hex()
    assert await crypto.service.decrypt([(bob, _aad("v_2"))]) == [SECRET]


async def test_an_altered_wrapped_secret_is_tampering(crypto):
    """Another subject's wrapped secret copied into Ada's row does not unwrap: each wrap is
    bound to its subject and key id."""
    (ada,), _ = await crypto.service.encrypt([(SECRET, _aad())], [ADA])
    await crypto.service.encrypt([(SECRET, _aad())], [BOB])
    bob_row = await _row(crypto, BOB)
    async with crypto.subjects._engine.begin() as conn:
        await conn.execute(
            update(subject_keys)
            .where(subject_keys.c.subject == ADA)
            .values(wrapped_secret=bob_row.wrapped_secret)
        )
    with pytest.raises(TamperedCiphertext):
        await crypto.service.decrypt([(ada, _aad())])


async def test_move_secrets_forward_before_retiring(crypto):
    for subject in (ADA, BOB, VISITOR):
        await crypto.service.encrypt([(SECRET, _aad())], [subject])
    crypto.rotate_data()
    await crypto.service.shred_subject(VISITOR, actor="visitors")
    sweep = await move_secrets_forward(crypto.subjects, crypto.keyring.data, 2, page=1)
    assert (sweep.moved, sweep.unreadable, sweep.remaining) == (2, 0, 0)
    assert (await _row(crypto, ADA)).wrap_version == 2
    assert (await _row(crypto, VISITOR)).wrapped_secret is None  # a shred is never undone
    again = await move_secrets_forward(crypto.subjects, crypto.keyring.data, 2)
    assert again.moved == 0


# -- round trips ------------------------------------------------------------------------------


async def test_a_batch_of_one_subject_reads_its_row_once(make_crypto, subject_engine):
    crypto = make_crypto(max_items=1000)
    await crypto.service.encrypt([(SECRET, _aad())], [ADA])  # the secret exists
    statements = _subject_statements(subject_engine)
    items = [(SECRET, _aad(f"v_{i}")) for i in range(100)]
    sealed, _ = await crypto.service.encrypt(items, [ADA] * 100)
    assert len(statements) == 1
    opened = await crypto.service.decrypt([(c, a) for c, (_, a) in zip(sealed, items, strict=True)])
    assert opened == [SECRET] * 100
    assert len(statements) == 2
    await crypto.service.rewrap([(c, a) for c, (_, a) in zip(sealed, items, strict=True)])
    assert len(statements) == 3
    # No subject at all: no statement.
    plain, _ = await crypto.service.encrypt(items)
    await crypto.service.decrypt([(c, a) for c, (_, a) in zip(plain, items, strict=True)])
    assert len(statements) == 3


async def test_a_new_subject_costs_an_insert_and_one_more_read(make_crypto, subject_engine):
    crypto = make_crypto(max_items=1000)
    statements = _subject_statements(subject_engine)
    await crypto.service.encrypt(
        [(SECRET, _aad())] * 50 + [(SECRET, _aad())] * 50, [ADA] * 50 + [BOB] * 50
    )
    assert [s.split()[0] for s in statements] == ["SELECT", "INSERT", "SELECT"]
