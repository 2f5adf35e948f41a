"""People's queries: their own events, their workspace's (owners, admins), paged safely."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from palisade_api.audit.v1 import audit_pb2 as pb

from .audit_support import FIREFOX, event, user_id

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _ts(moment) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


async def _mine(audit, user: str, ws: str, **fields) -> pb.ListEventsResponse:
    return await audit.stub.ListMyEvents(
        pb.ListMyEventsRequest(**fields), metadata=audit.person(user, ws, role="member")
    )


async def _workspace(audit, user: str, ws: str, role="admin", **fields) -> pb.ListEventsResponse:
    return await audit.stub.ListWorkspaceEvents(
        pb.ListWorkspaceEventsRequest(**fields), metadata=audit.person(user, ws, role=role)
    )


async def test_my_events_across_workspaces_newest_first(audit) -> None:
    me, other = user_id(), user_id()
    a, b = audit.workspace(), audit.workspace()
    now = audit.clock.now()
    mine = [
        event(workspace=a, actor=f"user:{me}", occurred_at=now - timedelta(minutes=3)),
        event(
            workspace=b, subject=me, actor=f"user:{other}", occurred_at=now - timedelta(minutes=2)
        ),
        event(
            type="session.login_failed",
            actor="anonymous",
            subject=f"user:{me}",
            outcome="failure",
            reason="wrong_password",
            occurred_at=now - timedelta(minutes=1),
        ),
    ]
    await audit.ingest(*mine, event(workspace=a, actor=f"user:{other}"))
    listed = await _mine(audit, me, a)
    assert [e.id for e in listed.events] == [e.event_id for e in reversed(mine)]
    newest = listed.events[0]
    assert (newest.type, newest.outcome, newest.reason) == (
        "session.login_failed",
        "failure",
        "wrong_password",
    )
    assert (newest.actor.type, newest.actor.id) == ("anonymous", "")
    assert newest.workspace_id == ""
    oldest = listed.events[-1]
    assert (oldest.actor.type, oldest.actor.id) == ("user", me)
    assert oldest.ip == "198.51.100.7"
    assert oldest.user_agent == FIREFOX
    assert (oldest.device.browser, oldest.device.os, oldest.device.kind) == (
        "Firefox 120",
        "Linux",
        "desktop",
    )
    assert oldest.source == "auth"
    assert not oldest.erased
    only = await _mine(audit, me, a, type="session.login_failed")
    assert [e.id for e in only.events] == [mine[2].event_id]


async def test_a_workspace_log_is_for_its_owners_and_admins_only(audit) -> None:
    a, b = audit.workspace(), audit.workspace()
    admin = user_id()
    await audit.ingest(event(workspace=a), event(workspace=b))
    listed = await _workspace(audit, admin, a)
    assert [e.workspace_id for e in listed.events] == [a]
    assert len((await _workspace(audit, admin, a, role="owner")).events) == 1
    await audit.refused(
        _workspace(audit, admin, a, role="member"),
        grpc.StatusCode.PERMISSION_DENIED,
        "permission_denied",
    )
    await audit.refused(
        audit.stub.ListWorkspaceEvents(
            pb.ListWorkspaceEventsRequest(), metadata=audit.service("auth")
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "unauthenticated",
    )


async def test_filters_and_ranges(audit) -> None:
    ws = audit.workspace()
    alice, bob = user_id(), user_id()
    now = audit.clock.now()
    old = event(workspace=ws, actor=f"user:{alice}", occurred_at=now - timedelta(hours=2))
    recent = event(
        workspace=ws, actor=f"user:{bob}", subject=alice, occurred_at=now - timedelta(minutes=5)
    )
    logout = event(
        workspace=ws,
        type="session.logout",
        actor=f"user:{bob}",
        occurred_at=now - timedelta(minutes=4),
    )
    await audit.ingest(old, recent, logout)
    admin = user_id()
    by_actor = await _workspace(audit, admin, ws, actor=f"user:{bob}")
    assert {e.id for e in by_actor.events} == {recent.event_id, logout.event_id}
    by_subject = await _workspace(audit, admin, ws, subject=f"user:{alice}")
    assert [e.id for e in by_subject.events] == [recent.event_id]
    by_type = await _workspace(audit, admin, ws, type="session.logout")
    assert [e.id for e in by_type.events] == [logout.event_id]
    ranged = await _workspace(
        audit, admin, ws, since=_ts(now - timedelta(hours=1)), until=_ts(now - timedelta(minutes=4))
    )
    assert [e.id for e in ranged.events] == [recent.event_id]
    await audit.refused(
        _workspace(audit, admin, ws, since=_ts(now), until=_ts(now - timedelta(hours=1))),
        INVALID,
        "invalid_range",
    )
    await audit.refused(
        _workspace(audit, admin, ws, type="session.nope"), INVALID, "unknown_event_type"
    )
    await audit.refused(_mine(audit, admin, ws, type="session.nope"), INVALID, "unknown_event_type")
    await audit.refused(_workspace(audit, admin, ws, actor="bob"), INVALID, "invalid_filter")


async def test_pages_and_their_tokens(audit) -> None:
    a, b = audit.workspace(), audit.workspace()
    admin, other = user_id(), user_id()
    await audit.ingest(
        *(event(workspace=a) for _ in range(7)), *(event(workspace=b) for _ in range(4))
    )
    seen, token, pages = [], "", 0
    while True:
        page = await _workspace(audit, admin, a, page_size=3, page_token=token)
        seen += [e.id for e in page.events]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    first = await _workspace(audit, admin, a, page_size=3)
    token = first.next_page_token
    # Forged, or carried to another workspace, another caller, other filters: refused.
    for forged in ["x", token[:-2] + "AA", "p1." + token.split(".")[1] + ".AAAA"]:
        await audit.refused(
            _workspace(audit, admin, a, page_token=forged), INVALID, "invalid_page_token"
        )
    await audit.refused(
        _workspace(audit, admin, b, page_token=token), INVALID, "invalid_page_token"
    )
    await audit.refused(
        _workspace(audit, other, a, page_token=token), INVALID, "invalid_page_token"
    )
    await audit.refused(
        _workspace(audit, admin, a, page_token=token, type="session.logout"),
        INVALID,
        "invalid_page_token",
    )
    await audit.refused(_mine(audit, admin, a, page_token=token), INVALID, "invalid_page_token")


async def test_an_erased_subject_reads_as_erased_and_the_chain_still_verifies(audit) -> None:
    ws = audit.workspace()
    gone, kept = user_id(), user_id()
    await audit.ingest(
        event(workspace=ws, actor=f"user:{gone}", ip="198.51.100.1"),
        event(workspace=ws, actor=f"user:{kept}", ip="198.51.100.2"),
    )
    await audit.shred(f"user:{gone}")
    listed = await _workspace(audit, user_id(), ws)
    by_actor = {e.actor.id: e for e in listed.events}
    assert by_actor[gone].erased
    assert (by_actor[gone].ip, by_actor[gone].user_agent) == ("", "")
    assert by_actor[gone].device.browser == "Firefox 120"  # not PII: kept
    assert not by_actor[kept].erased
    assert by_actor[kept].ip == "198.51.100.2"
    # Events of the erased subject that arrive later are still recorded, without PII.
    late = event(workspace=ws, type="account.deleted", subject=gone, ip="198.51.100.1")
    assert (await audit.ingest(late)).stored == 1
    [shown] = [e for e in (await _workspace(audit, user_id(), ws)).events if e.id == late.event_id]
    assert shown.erased
    assert shown.ip == ""
    checkpoint = await audit.stub.GetCheckpoint(
        pb.GetCheckpointRequest(), metadata=audit.person(user_id(), ws)
    )
    assert checkpoint.size == 3


async def test_reads_with_crypto_down_are_unavailable(audit) -> None:
    ws = audit.workspace()
    await audit.ingest(event(workspace=ws))
    await audit.crypto.running.server.stop(0)
    await audit.refused(
        _workspace(audit, user_id(), ws), grpc.StatusCode.UNAVAILABLE, "unavailable"
    )


async def test_locations_from_a_configured_geoip_database(
    audit_factory, sqlite_url, tmp_path
) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    writer.insert_network(
        IPSet(["198.51.100.0/24"]),
        {"city": {"names": {"en": "Zurich"}}, "country": {"names": {"en": "Switzerland"}}},
    )
    database = tmp_path / "geo.mmdb"
    writer.to_db_file(str(database))
    async with audit_factory(sqlite_url, geoip_database=database) as audit:
        ws = audit.workspace()
        await audit.ingest(
            event(workspace=ws, ip="198.51.100.4"), event(workspace=ws, ip="192.0.2.1")
        )
        listed = await _workspace(audit, user_id(), ws)
        located = {e.ip: (e.location.country, e.location.city) for e in listed.events}
    assert located == {"198.51.100.4": ("Switzerland", "Zurich"), "192.0.2.1": ("", "")}


@pytest.mark.parametrize("size", [0, 500])
async def test_page_sizes_are_bounded(audit, size) -> None:
    ws = audit.workspace()
    await audit.ingest(*(event(workspace=ws, event_id=uuid.uuid4().hex) for _ in range(3)))
    assert len((await _workspace(audit, user_id(), ws, page_size=size)).events) == 3
