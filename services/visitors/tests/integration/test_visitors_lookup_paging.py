"""FindVisitors pages: sizes, ties, and tokens bound to the workspace, the mode and the lookup."""

from __future__ import annotations

import grpc
import pytest

from palisade_api.visitors.v1 import visitors_pb2 as pb

from .conftest import new_workspace

BAD = grpc.StatusCode.INVALID_ARGUMENT


def _find(harness, metadata, **fields):
    return harness.stub.FindVisitors(pb.FindVisitorsRequest(**fields), metadata=metadata)


async def test_pages_in_order_with_ties_and_a_visitor_made_meanwhile(harness) -> None:
    ws = new_workspace()
    me = harness.person(ws)
    # Five created in the same instant (ties broken by id), then two later.
    made = [(await harness.create(me, email="pat@example.com")).id for _ in range(5)]
    harness.clock.advance(1)
    made += [(await harness.create(me, email="Pat@Example.com")).id for _ in range(2)]
    first = await _find(harness, me, email="pat@example.com", page_size=3)
    assert len(first.visitors) == 3
    assert first.next_page_token
    harness.clock.advance(1)
    newer = (await harness.create(me, email="pat@example.com")).id  # after the first page
    rest: list[str] = []
    token = first.next_page_token
    while token:
        page = await _find(harness, me, email="pat@example.com", page_size=3, page_token=token)
        rest.extend(v.id for v in page.visitors)
        token = page.next_page_token
    shown = [v.id for v in first.visitors] + rest
    # Newest first, each once; the one made meanwhile sorts before the first page: not shown.
    later, same_instant = made[5:], made[:5]
    assert shown == sorted(later, reverse=True) + sorted(same_instant, reverse=True)
    assert newer not in shown
    everything = await _find(harness, me, email="pat@example.com", page_size=100)
    assert [v.id for v in everything.visitors] == [newer, *shown]
    assert everything.next_page_token == ""


@pytest.mark.parametrize("size", [-1, 101])
async def test_a_page_size_out_of_range_is_refused(harness, size: int) -> None:
    ws = new_workspace()
    await harness.refused(
        _find(harness, harness.person(ws), email="a@example.com", page_size=size),
        BAD,
        "invalid_page_size",
    )


async def test_a_token_is_bound_to_workspace_mode_and_lookup(harness) -> None:
    ws, other = new_workspace(), new_workspace()
    me = harness.person(ws)
    for _ in range(3):
        await harness.create(me, email="kim@example.com", phone="+4915112345678")
    token = (await _find(harness, me, email="kim@example.com", page_size=1)).next_page_token
    assert token
    # Still good for the same lookup, spelt differently (the same index tokens).
    ok = await _find(harness, me, email="KIM@example.com", page_size=1, page_token=token)
    assert len(ok.visitors) == 1
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    refused = [
        (harness.person(other), {"email": "kim@example.com", "page_token": token}),
        (harness.key(ws, mode="test"), {"email": "kim@example.com", "page_token": token}),
        (me, {"email": "kim2@example.com", "page_token": token}),
        (me, {"phone": "+4915112345678", "page_token": token}),
        (me, {"email": "kim@example.com", "page_token": forged}),
        (me, {"email": "kim@example.com", "page_token": "p1.made.up"}),
    ]
    for metadata, fields in refused:
        await harness.refused(_find(harness, metadata, **fields), BAD, "invalid_page_token")
