"""Whose key an event's PII is sealed under when one person acts on another (found in review).

auth emits member.removed and member.role_changed with actor = the admin, subject = the member,
and the admin's IP and device. Those fields describe the admin's client: they are sealed under
the admin's key (deleting the admin erases them), and the member's own log
(ListMyEvents = GET /v1/me/security-events) does not show them.
"""

from __future__ import annotations

from palisade_api.audit.v1 import audit_pb2 as pb

from .audit_support import FIREFOX, event, user_id

ADMIN_IP = "198.51.100.77"


async def _removal(audit) -> tuple[str, str, str, pb.IngestEvent]:
    ws = audit.workspace()
    admin, member = user_id(), user_id()
    # As auth's team/membership.py writes it: the admin's client, the member as subject.
    removed = event(
        workspace=ws,
        type="member.removed",
        actor=f"user:{admin}",
        subject=member,
        ip=ADMIN_IP,
        user_agent=FIREFOX,
        reason="member_removed",
    )
    await audit.ingest(removed)
    return ws, admin, member, removed


async def test_a_removed_member_does_not_read_the_admins_ip(audit) -> None:
    ws, _admin, member, removed = await _removal(audit)
    listed = await audit.stub.ListMyEvents(
        pb.ListMyEventsRequest(), metadata=audit.person(member, ws, role="member")
    )
    [shown] = [e for e in listed.events if e.id == removed.event_id]
    assert (shown.ip, shown.user_agent) == ("", ""), "the member sees the admin's client"


async def test_deleting_the_admin_erases_the_admins_ip(audit) -> None:
    ws, admin, _member, removed = await _removal(audit)
    await audit.shred(f"user:{admin}")  # the admin deleted their account
    listed = await audit.stub.ListWorkspaceEvents(
        pb.ListWorkspaceEventsRequest(), metadata=audit.person(user_id(), ws, role="owner")
    )
    [shown] = [e for e in listed.events if e.id == removed.event_id]
    assert shown.ip != ADMIN_IP, "a deleted person's IP is still readable"
