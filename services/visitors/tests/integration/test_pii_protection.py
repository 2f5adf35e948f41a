"""What protects visitors' PII: bad input writes nothing, copied envelopes fail, erasure makes
every copy unreadable, crypto outages store nothing, and database files hold no plaintext."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from sqlalchemy.engine import make_url

from palisade.common.crypto_client import SubjectErased
from palisade.visitors.pii import field_aad, subject_of
from palisade_api.visitors.v1 import visitors_pb2 as pb

from .conftest import new_workspace

BAD = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({}, "pii_required"),
        ({"name": ""}, "pii_required"),
        ({"name": "   "}, "invalid_name"),
        ({"name": "x" * 201}, "invalid_name"),
        ({"name": "Ada\x00"}, "invalid_name"),
        ({"name": "Ada\nBcc: x"}, "invalid_name"),
        ({"name": "Ada", "email": "not-an-email"}, "invalid_email"),
        ({"email": "a@b"}, "invalid_email"),
        ({"email": "a@@example.com"}, "invalid_email"),
        ({"email": "a b@example.com"}, "invalid_email"),
        ({"email": "x" * 250 + "@example.com"}, "invalid_email"),
        ({"email": "ada@example.com\r\n"}, "invalid_email"),  # trimmed: fine, see below
        ({"email": "ada@exa\x00mple.com"}, "invalid_email"),
        ({"email": "a..b@example.com"}, "invalid_email"),
        ({"phone": "12345"}, "invalid_phone"),
        ({"phone": "4915112345678"}, "invalid_phone"),  # no country code marker
        ({"phone": "+49 151 CALL ME"}, "invalid_phone"),
        ({"phone": "+0123456789"}, "invalid_phone"),
        ({"phone": "+1234567890123456"}, "invalid_phone"),  # 16 digits
        ({"phone": "+" + "1" * 100}, "invalid_phone"),
        ({"name": "Ada", "phone": "+49 151\x0012345678"}, "invalid_phone"),
    ],
)
async def test_bad_input_is_invalid_argument_and_writes_nothing(harness, fields, code) -> None:
    ws = new_workspace()
    if fields == {"email": "ada@example.com\r\n"}:
        made = await harness.create(harness.person(ws), **fields)  # surrounding space is trimmed
        assert made.email == "ada@example.com"
        return
    await harness.refused(harness.create(harness.person(ws), **fields), BAD, code)
    assert await harness.rows() == []
    assert await harness.events() == []


async def test_lookup_needs_exactly_one_well_formed_value(harness) -> None:
    ws = new_workspace()
    for request, code in (
        (pb.FindVisitorsRequest(), "lookup_required"),
        (pb.FindVisitorsRequest(email="a@example.com", phone="+4915112345678"), "lookup_required"),
        (pb.FindVisitorsRequest(email="nope"), "invalid_email"),
        (pb.FindVisitorsRequest(phone="nope"), "invalid_phone"),
    ):
        await harness.refused(
            harness.stub.FindVisitors(request, metadata=harness.person(ws)), BAD, code
        )


async def test_an_envelope_copied_to_another_visitor_or_field_fails(harness) -> None:
    ws = new_workspace()
    ada = await harness.create(harness.person(ws), name="Ada", email="ada@example.com")
    bob = await harness.create(harness.person(ws), name="Bob", email="bob@example.com")
    ada_row = await harness.row(ada.id)
    # Ada's email in Bob's row: same workspace, same field, another visitor.
    await harness.execute(
        "UPDATE visitors SET email_ct = :ct WHERE id = :id", ct=ada_row.email_ct, id=bob.id
    )
    error = await harness.refused(
        harness.stub.GetVisitor(pb.GetVisitorRequest(id=bob.id), metadata=harness.person(ws)),
        grpc.StatusCode.INTERNAL,
        "internal",
    )
    assert "ada" not in (error.details() or "").lower()
    # Ada's email as her own name: same visitor, another field.
    await harness.execute(
        "UPDATE visitors SET name_ct = :ct WHERE id = :id", ct=ada_row.email_ct, id=ada.id
    )
    await harness.refused(
        harness.stub.GetVisitor(pb.GetVisitorRequest(id=ada.id), metadata=harness.person(ws)),
        grpc.StatusCode.INTERNAL,
        "internal",
    )
    # A flipped bit.
    flipped = bytearray(ada_row.phone_ct or ada_row.email_ct)
    flipped[-1] ^= 1
    crypto = harness.server.crypto
    with pytest.raises(Exception) as caught:
        await crypto.decrypt([(bytes(flipped), field_aad(ws, ada.id, "email"))])
    assert getattr(caught.value, "code", None) == "internal"


async def test_erasure_shreds_clears_and_is_idempotent(harness) -> None:
    ws = new_workspace()
    made = await harness.create(
        harness.key(ws), name="Ada", email="ada@example.com", phone="+4915112345678"
    )
    await harness.stub.CreateVisitor(
        pb.CreateVisitorRequest(name="Other"), metadata=harness.person(ws)
    )
    before = await harness.row(made.id)
    await harness.stub.EraseVisitor(pb.EraseVisitorRequest(id=made.id), metadata=harness.key(ws))
    after = await harness.row(made.id)
    assert after.erased_at is not None
    for column in (
        "name_ct",
        "email_ct",
        "phone_ct",
        "email_index",
        "phone_index",
        "data_key_version",
    ):
        assert getattr(after, column) is None, column
    got = await harness.stub.GetVisitor(
        pb.GetVisitorRequest(id=made.id), metadata=harness.person(ws)
    )
    assert got.erased
    assert (got.name, got.email, got.phone) == ("", "", "")
    # Every old copy of the envelopes (a backup, an outbox, a log) is unreadable for good.
    for field in ("name", "email", "phone"):
        with pytest.raises(SubjectErased):
            await harness.server.crypto.decrypt(
                [(getattr(before, f"{field}_ct"), field_aad(ws, made.id, field))]
            )
    # Again: a success, no second event.
    await harness.stub.EraseVisitor(pb.EraseVisitorRequest(id=made.id), metadata=harness.person(ws))
    [event] = await harness.events("visitor.erased")
    payload = json.loads(event.payload)
    assert payload["details"] == {"visitor_id": made.id, "test": False}
    assert payload["subject"] == subject_of(made.id)
    # The other visitor still reads.
    others = [r for r in await harness.rows() if r.id != made.id]
    assert others[0].erased_at is None


async def test_an_erasure_interrupted_after_the_shred_is_finished_by_the_next_read(harness) -> None:
    ws = new_workspace()
    made = await harness.create(harness.person(ws), name="Ada", email="ada@example.com")
    # What a crash between the shred and the clearing leaves: the key gone, the row full.
    assert await harness.server.crypto.shred_subject(subject_of(made.id))
    got = await harness.stub.GetVisitor(
        pb.GetVisitorRequest(id=made.id), metadata=harness.person(ws)
    )
    assert got.erased
    assert got.name == ""
    row = await harness.row(made.id)
    assert row.erased_at is not None
    assert row.email_ct is None
    [event] = await harness.events("visitor.erased")
    # The reader erased no one: the service finished its own interrupted erasure.
    assert json.loads(event.payload)["actor"] == "service:visitors"
    # And the retry of the erasure itself succeeds without a second event.
    await harness.stub.EraseVisitor(pb.EraseVisitorRequest(id=made.id), metadata=harness.person(ws))
    assert len(await harness.events("visitor.erased")) == 1


async def test_an_erased_visitors_envelope_planted_in_a_live_row_fails_and_clears_nothing(
    harness,
) -> None:
    """Crypto answers subject_erased for it whatever its associated data, so only asking about
    the row's own subject tells a planted envelope from an interrupted erasure."""
    ws = new_workspace()
    ada = await harness.create(harness.person(ws), name="Ada", email="ada@example.com")
    bob = await harness.create(harness.person(ws), name="Bob", email="bob@example.com")
    old_copy = (await harness.row(ada.id)).name_ct  # e.g. from a restored backup
    await harness.stub.EraseVisitor(pb.EraseVisitorRequest(id=ada.id), metadata=harness.person(ws))
    await harness.execute(
        "UPDATE visitors SET name_ct = :ct WHERE id = :id", ct=old_copy, id=bob.id
    )
    await harness.refused(
        harness.stub.GetVisitor(pb.GetVisitorRequest(id=bob.id), metadata=harness.person(ws)),
        grpc.StatusCode.INTERNAL,
        "internal",
    )
    found = harness.stub.FindVisitors(
        pb.FindVisitorsRequest(email="bob@example.com"), metadata=harness.person(ws)
    )
    await harness.refused(found, grpc.StatusCode.INTERNAL, "internal")
    row = await harness.row(bob.id)
    assert row.erased_at is None
    assert row.email_ct is not None
    erased = await harness.events("visitor.erased")
    assert [json.loads(e.payload)["details"]["visitor_id"] for e in erased] == [ada.id]


async def test_crypto_down_stores_nothing_and_reads_fail_unavailable(harness) -> None:
    ws = new_workspace()
    made = await harness.create(harness.person(ws), name="Ada", email="ada@example.com")
    await harness.stop_crypto()
    unavailable = grpc.StatusCode.UNAVAILABLE
    await harness.refused(
        harness.create(harness.person(ws), name="Bob", email="bob@example.com"),
        unavailable,
        "unavailable",
    )
    await harness.refused(
        harness.stub.GetVisitor(pb.GetVisitorRequest(id=made.id), metadata=harness.person(ws)),
        unavailable,
        "unavailable",
    )
    await harness.refused(
        harness.stub.FindVisitors(
            pb.FindVisitorsRequest(email="ada@example.com"), metadata=harness.person(ws)
        ),
        unavailable,
        "unavailable",
    )
    await harness.refused(
        harness.stub.EraseVisitor(pb.EraseVisitorRequest(id=made.id), metadata=harness.person(ws)),
        unavailable,
        "unavailable",
    )
    rows = await harness.rows()
    assert [r.id for r in rows] == [made.id]
    assert rows[0].erased_at is None
    assert len(await harness.events()) == 1  # Ada's visitor.created only


PEOPLE = [
    ("Zoë Quartermaine", "zoe.quartermaine@example.org", "+4915199887766"),
    ("Þórunn Sigfúsdóttir", "THORUNN@example.is", "+3545512345"),
    ("Ασπασία Παπαδοπούλου", "aspasia@example.gr", "+302101234567"),
]


def _needles() -> list[bytes]:
    out = []
    for name, email, phone in PEOPLE:
        for value in (name, email, email.casefold(), phone, phone[1:]):
            out += [value.encode("utf-8"), value.encode("utf-16-le")]
    return out


async def _create_people(harness, ws: str) -> None:
    for name, email, phone in PEOPLE:
        made = await harness.create(
            harness.key(ws, mode="test"), name=name, email=email, phone=phone
        )
        got = await harness.stub.GetVisitor(
            pb.GetVisitorRequest(id=made.id), metadata=harness.key(ws, mode="test")
        )
        assert (got.name, got.email, got.phone) == (name, email, phone)  # the API returns them


async def test_a_postgres_dump_holds_no_visitor_pii(visitors_factory, postgres_url) -> None:
    ws = new_workspace()
    async with visitors_factory(postgres_url) as harness:
        await _create_people(harness, ws)
        dump = await asyncio.to_thread(_pg_dump, postgres_url)
    assert b"visitors" in dump  # the dump is real
    for needle in _needles():
        assert needle not in dump, needle


async def test_the_sqlite_file_holds_no_visitor_pii(visitors_factory, tmp_path) -> None:
    path = tmp_path / "visitors-pii.db"
    ws = new_workspace()
    async with visitors_factory(f"sqlite+aiosqlite:///{path}") as harness:
        await _create_people(harness, ws)
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("visitors-pii.db*"))
    assert b"visitors" in raw
    for needle in _needles():
        assert needle not in raw, needle


def _pg_dump(database_url: str) -> bytes:
    """pg_dump's data, and every row's raw values (pg_dump shows bytea as hex, so plaintext
    inside an envelope column would hide from a text search of it alone)."""
    import shutil
    import subprocess

    import psycopg

    url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    binary = shutil.which("pg_dump")
    assert binary is not None, "pg_dump is needed"
    dump = bytearray(
        subprocess.run(
            [binary, "--data-only", url], capture_output=True, check=True, timeout=60
        ).stdout
    )
    with psycopg.connect(url) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        for (table,) in tables.fetchall():
            for row in conn.execute(f'SELECT * FROM "{table}"').fetchall():
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        dump += bytes(value)
                    elif value is not None:
                        dump += str(value).encode()
    return bytes(dump)
