"""The team's pure rules: role names and ranks, "never above your own role", and the lists'
page tokens (what the lists mint decodes; nothing else is a position)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from palisade.auth.team.errors import InvalidRole, RoleAboveYours
from palisade.auth.team.invitation_records import INVITATION_ID, InvitationRow
from palisade.auth.team.paging import (
    MAX_PAGE_SIZE,
    InvalidPageSize,
    InvalidPageToken,
    decode_cursor,
    encode_cursor,
    page_size,
)
from palisade.auth.team.roles import ADMIN, MEMBER, OWNER, parse_role, require_not_above

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_roles_are_spelled_one_way() -> None:
    assert [parse_role(r) for r in ("owner", "admin", "member")] == [OWNER, ADMIN, MEMBER]
    for bad in ("", "Owner", "OWNER", " admin", "superuser", "owner\x00"):
        with pytest.raises(InvalidRole):
            parse_role(bad)


@pytest.mark.parametrize(
    ("actor", "role", "allowed"),
    [
        (OWNER, OWNER, True),
        (OWNER, ADMIN, True),
        (ADMIN, ADMIN, True),
        (ADMIN, MEMBER, True),
        (ADMIN, OWNER, False),
        (MEMBER, ADMIN, False),
        (MEMBER, MEMBER, True),
    ],
)
def test_nobody_acts_above_their_role(actor: str, role: str, allowed: bool) -> None:
    if allowed:
        require_not_above(actor, role)
    else:
        with pytest.raises(RoleAboveYours):
            require_not_above(actor, role)


def test_page_sizes() -> None:
    assert page_size(0) == 50
    assert page_size(7) == 7
    assert page_size(10_000) == MAX_PAGE_SIZE
    with pytest.raises(InvalidPageSize):
        page_size(-1)


def test_cursors_round_trip_and_refuse_anything_else() -> None:
    item = "inv_" + "a" * 32
    assert decode_cursor(encode_cursor(NOW, item), INVITATION_ID) == (NOW, item)
    users = re.compile(r"usr_[0-9a-f]{32}")
    for bad in (
        "",
        "!!!",
        "x" * 300,
        "é",
        encode_cursor(NOW, "inv_\x00"),
        encode_cursor(NOW, item)[:-3],
    ):
        with pytest.raises(InvalidPageToken):
            decode_cursor(bad, INVITATION_ID)
    with pytest.raises(InvalidPageToken):  # an invitation's position is no member's
        decode_cursor(encode_cursor(NOW, item), users)


def _invitation(**changes: object) -> InvitationRow:
    values: dict[str, object] = {
        "id": "inv_" + "a" * 32,
        "workspace_id": "ws_" + "b" * 32,
        "email_index": "bi1.1.x",
        "email_ct": b"",
        "role": MEMBER,
        "created_by": "usr_" + "c" * 32,
        "created_at": NOW,
        "expires_at": NOW + timedelta(days=7),
        "used_at": None,
        "revoked_at": None,
        "accepted_by": None,
    }
    values.update(changes)
    return InvitationRow(**values)  # type: ignore[arg-type]


def test_invitation_states() -> None:
    assert _invitation().state(NOW) == "pending"
    assert _invitation().state(NOW + timedelta(days=7)) == "expired"
    assert _invitation(used_at=NOW).state(NOW) == "accepted"
    # Revoked uses the token up too (used_at), and says so whatever the clock says.
    revoked = _invitation(used_at=NOW, revoked_at=NOW)
    assert revoked.state(NOW) == revoked.state(NOW + timedelta(days=30)) == "revoked"
