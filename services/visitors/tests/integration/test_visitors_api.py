"""VisitorsService over real gRPC with a real crypto, on SQLite and Postgres: round trips,
normalization, lookups, workspace isolation, test mode, and what callers may do."""

from __future__ import annotations

import json

import grpc
import pytest

from palisade_api.visitors.v1 import visitors_pb2 as pb

NOT_FOUND = grpc.StatusCode.NOT_FOUND


async def test_create_get_and_what_is_stored(harness) -> None:
    ws = new_ws()
    made = await harness.create(
        harness.key(ws),
        name="  Ada Lovelace ",
        email=" Ada@Example.com ",
        phone="+44 (20) 7946-0958",
    )
    assert made.id.startswith("vis_")
    assert (made.name, made.email, made.phone) == (
        "Ada Lovelace",
        "Ada@Example.com",
        "+442079460958",
    )
    assert not made.test
    assert not made.erased
    got = await harness.stub.GetVisitor(
        pb.GetVisitorRequest(id=made.id), metadata=harness.person(ws)
    )
    assert got == made
    row = await harness.row(made.id)
    assert row.workspace_id == ws
    assert row.data_key_version == 1
    assert row.index_key_version == 1
    for column in (row.name_ct, row.email_ct, row.phone_ct):
        assert b"Ada" not in column
        assert b"7946" not in column
    assert row.email_index.startswith("bi1.1.")
    [event] = await harness.events("visitor.created")
    payload = json.loads(event.payload)
    assert payload["subject"] == f"visitor:{made.id}"
    assert payload["details"] == {"visitor_id": made.id, "test": False}
    assert "Ada" not in event.payload
    assert "7946" not in event.payload


async def test_the_same_pii_twice_gives_other_envelopes(harness) -> None:
    ws = new_ws()
    a = await harness.create(harness.person(ws), name="Same", email="same@example.com")
    b = await harness.create(harness.person(ws), name="Same", email="same@example.com")
    row_a, row_b = await harness.row(a.id), await harness.row(b.id)
    assert row_a.name_ct != row_b.name_ct
    assert row_a.email_index == row_b.email_index  # equal addresses index equally


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("Σοφίας@example.gr", "ΣΟΦΊΑΣ@EXAMPLE.GR"),  # final sigma and capital sigma are one
        ("ΣΟΦΊΑΣ@example.gr", "σοφίασ@example.gr"),
        ("Straße@example.de", "STRASSE@example.de"),  # sharp s folds to ss
        ("ｊｏｅ@example.com", "joe@EXAMPLE.com"),  # full-width letters (NFKC)
        ("  bob@example.com", "BOB@example.com  "),
    ],
)
async def test_email_lookup_normalizes(harness, stored: str, asked: str) -> None:
    ws = new_ws()
    made = await harness.create(harness.person(ws), email=stored)
    assert made.email == stored.strip()
    found = await harness.stub.FindVisitors(
        pb.FindVisitorsRequest(email=asked), metadata=harness.person(ws)
    )
    assert [v.id for v in found.visitors] == [made.id]


async def test_phone_lookup_reads_separators_and_00(harness) -> None:
    ws = new_ws()
    made = await harness.create(harness.person(ws), phone="0049 (151) 123.456-78")
    assert made.phone == "+4915112345678"
    found = await harness.stub.FindVisitors(
        pb.FindVisitorsRequest(phone="+49 151 12345678"), metadata=harness.person(ws)
    )
    assert [v.id for v in found.visitors] == [made.id]
    # The email index and the phone index are separate domains.
    none = await harness.stub.FindVisitors(
        pb.FindVisitorsRequest(email="+4915112345678@x.io"), metadata=harness.person(ws)
    )
    assert list(none.visitors) == []


async def test_lookup_is_newest_first_and_skips_erased(harness) -> None:
    ws = new_ws()
    old = await harness.create(harness.person(ws), email="twin@example.com")
    harness.clock.advance(5)
    new = await harness.create(harness.person(ws), email="twin@example.com")
    harness.clock.advance(5)
    gone = await harness.create(harness.person(ws), email="twin@example.com")
    await harness.stub.EraseVisitor(pb.EraseVisitorRequest(id=gone.id), metadata=harness.person(ws))
    found = await harness.stub.FindVisitors(
        pb.FindVisitorsRequest(email="twin@example.com"), metadata=harness.person(ws)
    )
    assert [v.id for v in found.visitors] == [new.id, old.id]


async def test_workspace_isolation_on_every_route(harness) -> None:
    ws, other = new_ws(), new_ws()
    made = await harness.create(harness.person(ws), name="Ada", email="ada@example.com")
    for metadata in (harness.person(other), harness.key(other)):
        await harness.refused(
            harness.stub.GetVisitor(pb.GetVisitorRequest(id=made.id), metadata=metadata),
            NOT_FOUND,
            "visitor_not_found",
        )
        await harness.refused(
            harness.stub.EraseVisitor(pb.EraseVisitorRequest(id=made.id), metadata=metadata),
            NOT_FOUND,
            "visitor_not_found",
        )
        found = await harness.stub.FindVisitors(
            pb.FindVisitorsRequest(email="ada@example.com"), metadata=metadata
        )
        assert list(found.visitors) == []
    assert (await harness.row(made.id)).erased_at is None
    # Unknown and malformed ids answer alike.
    for bad in ("vis_" + "0" * 32, "nope", "vis_" + "G" * 32, "vis_\x00", ""):
        await harness.refused(
            harness.stub.GetVisitor(pb.GetVisitorRequest(id=bad), metadata=harness.person(ws)),
            NOT_FOUND,
            "visitor_not_found",
        )


async def test_test_mode_keys_see_only_test_visitors(harness) -> None:
    ws = new_ws()
    test = await harness.create(harness.key(ws, mode="test"), name="Test visitor", email="t@x.io")
    live = await harness.create(harness.key(ws), name="Live visitor", email="t@x.io")
    assert test.test
    assert not live.test
    assert (await harness.row(test.id)).test
    for metadata in (harness.key(ws), harness.person(ws)):
        await harness.refused(
            harness.stub.GetVisitor(pb.GetVisitorRequest(id=test.id), metadata=metadata),
            NOT_FOUND,
            "visitor_not_found",
        )
        found = await harness.stub.FindVisitors(
            pb.FindVisitorsRequest(email="t@x.io"), metadata=metadata
        )
        assert [v.id for v in found.visitors] == [live.id]
    test_key = harness.key(ws, mode="test")
    got = await harness.stub.GetVisitor(pb.GetVisitorRequest(id=test.id), metadata=test_key)
    assert got.name == "Test visitor"
    await harness.refused(
        harness.stub.GetVisitor(
            pb.GetVisitorRequest(id=live.id), metadata=harness.key(ws, mode="test")
        ),
        NOT_FOUND,
        "visitor_not_found",
    )
    found = await harness.stub.FindVisitors(
        pb.FindVisitorsRequest(email="t@x.io"), metadata=harness.key(ws, mode="test")
    )
    assert [v.id for v in found.visitors] == [test.id]


async def test_what_each_caller_may_do(harness) -> None:
    ws = new_ws()
    widget = harness.key(ws, type="publishable", scopes=("visitors:write", "chats:write"))
    made = await harness.create(widget, name="From the widget")
    denied = grpc.StatusCode.PERMISSION_DENIED
    reader = harness.key(ws, type="publishable", scopes=("visitors:write", "visitors:read"))
    await harness.refused(
        harness.stub.GetVisitor(pb.GetVisitorRequest(id=made.id), metadata=reader),
        denied,
        "secret_key_required",
    )
    await harness.refused(
        harness.stub.EraseVisitor(
            pb.EraseVisitorRequest(id=made.id),
            metadata=harness.key(ws, type="publishable", scopes=("visitors:write",)),
        ),
        denied,
        "secret_key_required",
    )
    await harness.refused(
        harness.stub.GetVisitor(
            pb.GetVisitorRequest(id=made.id), metadata=harness.key(ws, scopes=("chats:read",))
        ),
        denied,
        "permission_denied",
    )
    await harness.refused(
        harness.create(harness.signing.marker("gateway"), name="x"),
        denied,
        "workspace_required",
    )
    assert len(await harness.rows()) == 1


def new_ws() -> str:
    from .conftest import new_workspace

    return new_workspace()
