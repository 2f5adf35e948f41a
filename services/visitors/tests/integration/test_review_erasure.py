"""Review findings (issue 14): erasure.

Findings 1-3 were fixed in edc1f8b (palisade.visitors.erasure); their tests stay as regression
tests. Finding 4 is fixed too: erasure redacts the bodies of the messages the visitor wrote
(emptied, out of the search index, `erased` on reads) and keeps the agents' messages.

1. An erasure interrupted after the shred is finished by whoever reads the visitor next, and the
   `visitor.erased` event names that reader as its actor: the security log says a person (or a
   key) erased a visitor they only looked at. The rewrap job finishes the same case as
   `service:visitors`.
2. The reindex job skips a visitor whose subject was shredded but whose row was not cleared yet
   (it counts it as failed): the old-version tokens stay in the row, `index_versions_in_use`
   keeps reporting the old version, and `palisade-crypto keys retire --index` stays refused until
   someone happens to read that visitor. Rewrap finishes such an erasure; reindex should too.
3. Crypto answers `subject_erased` for an erased subject's envelope whatever its associated data
   (commit 4faeab7 says why). VisitorsService._open takes any `None` as "this visitor's subject
   is shredded" and clears the row: an old envelope of an erased visitor put into a live visitor's
   row (a restored backup, a bad migration, a DB-level attacker) erases the live visitor for good
   (its other envelopes are dropped) and emits a false `visitor.erased`, where it should fail as
   tampered.
4. SECURITY.md 51: "After a visitor is deleted, its PII is unreadable in every service". What the
   visitor typed into the chat stays plaintext and full-text searchable after the erasure, their
   email address included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from palisade.visitors.maintenance import KeyMaintenance
from palisade.visitors.metrics import VisitorsMetrics
from palisade.visitors.pii import subject_of
from palisade.visitors.store import VisitorStore
from palisade_api.visitors.v1 import visitors_pb2 as pb
from palisade_api.visitors.v1 import visitors_pb2_grpc

from .conftest import new_workspace


async def _no_wait(seconds: float) -> None:
    return None


def _job(harness: Any) -> KeyMaintenance:
    return KeyMaintenance(
        store=VisitorStore(engine=harness.server.engine),
        crypto=harness.server.crypto,
        clock=harness.clock,
        metrics=VisitorsMetrics(CollectorRegistry()),
        batch_rows=10,
        rows_per_second=1e6,
        sleep=_no_wait,
    )


@pytest.fixture
async def chats(harness: Any) -> AsyncIterator[visitors_pb2_grpc.ChatsServiceStub]:
    async with harness.signing.channel(harness.server.running.target) as channel:
        yield visitors_pb2_grpc.ChatsServiceStub(channel)


async def test_review_a_read_finishing_an_erasure_is_not_logged_as_the_readers_erasure(
    harness,
) -> None:
    ws = new_workspace()
    made = await harness.create(harness.person(ws, "usr_alice"), name="Ada")
    assert await harness.server.crypto.shred_subject(subject_of(made.id))  # crash after the shred
    got = await harness.stub.GetVisitor(
        pb.GetVisitorRequest(id=made.id), metadata=harness.person(ws, "usr_bob")
    )
    assert got.erased
    [event] = await harness.events("visitor.erased")
    assert json.loads(event.payload)["actor"] == "service:visitors"


async def test_review_reindex_finishes_an_interrupted_erasure(harness) -> None:
    ws = new_workspace()
    keep = (await harness.create(harness.person(ws), email="keep@example.com")).id
    gone = (await harness.create(harness.person(ws), email="gone@example.com")).id
    done = await asyncio.to_thread(harness.crypto_cli, "keys", "rotate", "--index")
    assert done.returncode == 0, done.stderr
    await harness.until_crypto(lambda c: c.keyring.current.index.primary == 2)
    assert await harness.server.crypto.shred_subject(subject_of(gone))  # crash after the shred
    harness.clock.advance(3600)

    await _job(harness).reindex()
    assert (await harness.row(keep)).index_key_version == 2
    row = await harness.row(gone)
    assert row.email_index is None
    assert row.erased_at is not None
    store = VisitorStore(engine=harness.server.engine)
    assert await store.index_versions_in_use() == [2]


async def test_review_an_erased_visitors_envelope_in_another_row_does_not_erase_that_row(
    harness,
) -> None:
    ws = new_workspace()
    ada = await harness.create(harness.person(ws), name="Ada", email="ada@example.com")
    bob = await harness.create(harness.person(ws), name="Bob", email="bob@example.com")
    old_copy = (await harness.row(ada.id)).name_ct  # e.g. from a backup
    await harness.stub.EraseVisitor(pb.EraseVisitorRequest(id=ada.id), metadata=harness.person(ws))
    await harness.execute(
        "UPDATE visitors SET name_ct = :ct WHERE id = :id", ct=old_copy, id=bob.id
    )

    # Refusing the tampered row is right; clearing it is not.
    with contextlib.suppress(grpc.aio.AioRpcError):
        await harness.stub.GetVisitor(pb.GetVisitorRequest(id=bob.id), metadata=harness.person(ws))
    row = await harness.row(bob.id)
    assert row.erased_at is None
    assert row.email_ct is not None  # Bob's own, untouched envelope is still there
    erased = [
        json.loads(e.payload)["details"]["visitor_id"]
        for e in await harness.events("visitor.erased")
    ]
    assert bob.id not in erased


async def _chat_with_both_sides(harness, chats, ws: str) -> tuple[pb.Visitor, pb.Chat]:
    widget = harness.key(ws, type="publishable", scopes=("visitors:write", "chats:write"))
    visitor = await harness.create(widget, name="Ada Lovelace", email="ada.lovelace@example.com")
    chat = await chats.CreateChat(pb.CreateChatRequest(visitor_id=visitor.id), metadata=widget)
    await chats.PostMessage(
        pb.PostMessageRequest(
            chat_id=chat.id, body="Hi, I am Ada Lovelace, write to ada.lovelace@example.com"
        ),
        metadata=widget,
    )
    # The agent's answer names the visitor too: the workspace's own text, kept as written.
    await chats.PostMessage(
        pb.PostMessageRequest(chat_id=chat.id, body="Hello Lovelace, your analytical engine"),
        metadata=harness.person(ws),
    )
    return visitor, chat


async def _search(chats, harness, ws: str, q: str) -> list[pb.Message]:
    found = await chats.SearchMessages(pb.SearchMessagesRequest(q=q), metadata=harness.person(ws))
    return list(found.messages)


async def test_review_an_erased_visitors_own_messages_no_longer_hold_their_pii(
    harness, chats
) -> None:
    ws = new_workspace()
    visitor, chat = await _chat_with_both_sides(harness, chats, ws)
    await harness.stub.EraseVisitor(
        pb.EraseVisitorRequest(id=visitor.id), metadata=harness.person(ws)
    )

    listed = await chats.ListMessages(
        pb.ListMessagesRequest(chat_id=chat.id), metadata=harness.person(ws)
    )
    # The history stays: both messages, in order, ids and times kept; the visitor's is emptied.
    assert [(m.sender, m.erased) for m in listed.messages] == [
        ("visitor", True),
        ("agent", False),
    ]
    assert listed.messages[0].body == ""
    assert listed.messages[1].body == "Hello Lovelace, your analytical engine"
    async with harness.server.engine.connect() as conn:
        left = await conn.scalar(
            text("SELECT count(*) FROM messages WHERE body LIKE :pii"),
            {"pii": "%ada.lovelace@example.com%"},
        )
    assert left == 0


async def test_review_search_no_longer_finds_an_erased_visitors_words(harness, chats) -> None:
    ws = new_workspace()
    visitor, _ = await _chat_with_both_sides(harness, chats, ws)
    before = await _search(chats, harness, ws, "lovelace")
    assert sorted(m.sender for m in before) == ["agent", "visitor"]
    await harness.stub.EraseVisitor(
        pb.EraseVisitorRequest(id=visitor.id), metadata=harness.person(ws)
    )

    # The visitor's words are out of the index (write, analytical only they / the agent used).
    assert await _search(chats, harness, ws, "write") == []
    assert await _search(chats, harness, ws, "example") == []
    # The agent's message is still found, by a word only it holds and by a shared one.
    assert [m.sender for m in await _search(chats, harness, ws, "analytical")] == ["agent"]
    assert [m.sender for m in await _search(chats, harness, ws, "lovelace")] == ["agent"]


async def test_review_an_interrupted_erasure_redacts_the_visitors_messages_when_finished(
    harness, chats
) -> None:
    ws = new_workspace()
    visitor, chat = await _chat_with_both_sides(harness, chats, ws)
    assert await harness.server.crypto.shred_subject(subject_of(visitor.id))  # crash here
    got = await harness.stub.GetVisitor(
        pb.GetVisitorRequest(id=visitor.id), metadata=harness.person(ws)
    )
    assert got.erased
    assert await _search(chats, harness, ws, "write") == []
    listed = await chats.ListMessages(
        pb.ListMessagesRequest(chat_id=chat.id), metadata=harness.person(ws)
    )
    assert [m.erased for m in listed.messages] == [True, False]


async def test_review_erasing_again_redacts_what_an_older_erasure_left(harness, chats) -> None:
    # An erasure committed before erasure redacted messages (simulated by restoring the body):
    # a repeated DELETE redacts it, and emits no second visitor.erased.
    ws = new_workspace()
    visitor, chat = await _chat_with_both_sides(harness, chats, ws)
    erase = pb.EraseVisitorRequest(id=visitor.id)
    await harness.stub.EraseVisitor(erase, metadata=harness.person(ws))
    await harness.execute(
        "UPDATE messages SET body = :body WHERE chat_id = :chat AND sender = 'visitor'",
        body="I am Ada Lovelace",
        chat=chat.id,
    )
    assert [m.sender for m in await _search(chats, harness, ws, "ada")] == ["visitor"]
    await harness.stub.EraseVisitor(erase, metadata=harness.person(ws))
    assert await _search(chats, harness, ws, "ada") == []
    assert len(await harness.events("visitor.erased")) == 1
