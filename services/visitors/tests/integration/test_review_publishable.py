"""Review finding (issue 14): what a publishable key (public: it is in a web page) can do to
the workspace's own lookups.

FindVisitors answers the 100 newest matches and has no next page. Anyone who copies the
widget's key out of the page can create visitors with someone else's email address (nothing is
verified), so 100 of them push the real visitor (created by the backend) out of every lookup of
that address: the support agent or the backend's erasure job that finds people by email finds
only the impostors. Either the lookup pages, or it does not let visitors from a publishable key
crowd out the rest.
"""

from __future__ import annotations

from palisade.visitors.store import MAX_MATCHES
from palisade_api.visitors.v1 import visitors_pb2 as pb

from .conftest import new_workspace


async def _every_page(harness, metadata, **lookup: str) -> list[pb.Visitor]:
    found: list[pb.Visitor] = []
    token = ""
    while True:
        page = await harness.stub.FindVisitors(
            pb.FindVisitorsRequest(page_token=token, **lookup), metadata=metadata
        )
        assert len(page.visitors) <= 50  # the default page size
        found.extend(page.visitors)
        token = page.next_page_token
        if not token:
            return found


async def test_review_a_widget_key_cannot_hide_a_visitor_from_the_email_lookup(
    harness_sqlite,
) -> None:
    harness = harness_sqlite
    ws = new_workspace()
    real = await harness.create(harness.key(ws), name="Ada", email="ada@example.com")
    widget = harness.key(ws, type="publishable", scopes=("visitors:write", "chats:write"))
    for n in range(MAX_MATCHES):
        harness.clock.advance(1)
        await harness.create(widget, name=f"Ada {n}", email="ADA@example.com")
    found = await _every_page(harness, harness.key(ws), email="ada@example.com")
    # Every one is reachable, newest first, none twice; and the integration can tell which
    # came from the public key.
    assert len(found) == MAX_MATCHES + 1
    assert len({v.id for v in found}) == MAX_MATCHES + 1
    assert found[-1].id == real.id
    assert [v.source for v in found if v.source != "widget"] == ["api"]
    made_by_person = await harness.create(harness.person(ws), name="Grace")
    assert made_by_person.source == "dashboard"
