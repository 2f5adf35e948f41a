"""Audit's page tokens (palisade.common.page_tokens with audit's error): bound to their scope
(caller, workspace, filters), unforgeable."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pytest

from palisade.audit.errors import InvalidPageToken
from palisade.common.page_tokens import PageTokens, scope

MOMENT = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def test_a_token_reads_back_in_its_scope() -> None:
    tokens = PageTokens(secrets.token_bytes(32), invalid=InvalidPageToken)
    bound = scope("workspace", "user:usr_a", "ws_1", "", "", "", "", "")
    assert tokens.read_int(tokens.issue(bound, MOMENT, 42), bound) == (MOMENT, 42)


@pytest.mark.parametrize(
    "other",
    [
        scope("workspace", "user:usr_a", "ws_2", "", "", "", "", ""),  # another workspace
        scope("workspace", "user:usr_b", "ws_1", "", "", "", "", ""),  # another caller
        scope("workspace", "user:usr_a", "ws_1", "session.logout", "", "", "", ""),  # filters
        scope("mine", "user:usr_a", "", "", "", "", ""),  # another method
    ],
)
def test_a_token_is_refused_elsewhere(other: bytes) -> None:
    tokens = PageTokens(secrets.token_bytes(32), invalid=InvalidPageToken)
    token = tokens.issue(scope("workspace", "user:usr_a", "ws_1", "", "", "", "", ""), MOMENT, 1)
    with pytest.raises(InvalidPageToken):
        tokens.read_int(token, other)


@pytest.mark.parametrize(
    "forged",
    ["", "p1", "p1.x.y", "p1..", "x" * 500, "p1.e30.AAAA", "p1.ü.x", "p2.a.b"],
)
def test_forged_tokens(forged: str) -> None:
    tokens = PageTokens(secrets.token_bytes(32), invalid=InvalidPageToken)
    with pytest.raises(InvalidPageToken):
        tokens.read_int(forged, scope("mine", "user:usr_a"))


def test_a_changed_position_fails_the_mac() -> None:
    tokens = PageTokens(secrets.token_bytes(32), invalid=InvalidPageToken)
    bound = scope("mine", "user:usr_a")
    version, payload, mac = tokens.issue(bound, MOMENT, 42).split(".")
    other_payload = tokens.issue(bound, MOMENT, 43).split(".")[1]
    with pytest.raises(InvalidPageToken):
        tokens.read_int(f"{version}.{other_payload}.{mac}", bound)
    other_key = PageTokens(secrets.token_bytes(32), invalid=InvalidPageToken)
    with pytest.raises(InvalidPageToken):  # another key
        other_key.read_int(f"{version}.{payload}.{mac}", bound)
