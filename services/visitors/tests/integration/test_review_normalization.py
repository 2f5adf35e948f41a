"""Review findings (issue 14): invisible format characters in PII.

normalize._is_text says it refuses "format characters that hide text", but it checks only the
categories Cc, Cs, Co and Cn: Cf (zero-width space U+200B, zero-width joiner U+200D, soft hyphen
U+00AD, byte-order mark U+FEFF, the bidi overrides U+202A-U+202E) passes. NFKC and case folding
keep them, so an address with a hidden character is stored and blind-indexed as a different
address: a lookup (or an erasure request found by lookup) for the address the person sees misses
the record, and a name can carry a right-to-left override that reverses what an agent reads.
"""

from __future__ import annotations

import grpc
import pytest

from palisade_api.visitors.v1 import visitors_pb2 as pb

from .conftest import new_workspace

BAD = grpc.StatusCode.INVALID_ARGUMENT

HIDDEN = [
    "ada\u200b@example.com",  # zero-width space
    "ada\u200d@example.com",  # zero-width joiner
    "a\u00adda@example.com",  # soft hyphen
    "\ufeffada@example.com",  # a byte-order mark pasted in front (str.strip keeps it)
]


@pytest.mark.parametrize("email", HIDDEN)
async def test_review_an_email_with_a_hidden_character_is_refused(harness, email: str) -> None:
    ws = new_workspace()
    await harness.refused(harness.create(harness.person(ws), email=email), BAD, "invalid_email")
    assert await harness.rows() == []


async def test_review_the_visible_address_finds_a_visitor_stored_with_a_hidden_one(
    harness,
) -> None:
    # Either outcome would be sound: the create refused, or the lookup matching. Today the
    # create succeeds and the lookup of what anyone reads on screen finds nothing.
    ws = new_workspace()
    try:
        made = await harness.create(harness.person(ws), email="ada\u200b@example.com")
    except grpc.aio.AioRpcError as refused:
        code = refused.code()
        assert code == BAD
        return
    found = await harness.stub.FindVisitors(
        pb.FindVisitorsRequest(email="ada@example.com"), metadata=harness.person(ws)
    )
    assert [v.id for v in found.visitors] == [made.id]


@pytest.mark.parametrize("name", ["Ada \u202egnp.exe", "Ada\u200b", "\u2066Ada\u2069"])
async def test_review_a_name_with_a_format_character_is_refused(harness, name: str) -> None:
    ws = new_workspace()
    await harness.refused(harness.create(harness.person(ws), name=name), BAD, "invalid_name")
    assert await harness.rows() == []


@pytest.mark.parametrize("email", HIDDEN)
async def test_review_a_lookup_with_a_hidden_character_is_refused(harness, email: str) -> None:
    ws = new_workspace()
    lookup = harness.stub.FindVisitors(
        pb.FindVisitorsRequest(email=email), metadata=harness.person(ws)
    )
    await harness.refused(lookup, BAD, "invalid_email")


async def test_review_a_name_keeps_zwnj_and_zwj(harness) -> None:
    ws = new_workspace()
    name = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 \U0001f469\u200d\U0001f4bb"
    made = await harness.create(harness.person(ws), name=name)
    assert made.name == name
