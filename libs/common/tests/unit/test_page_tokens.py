"""Common page tokens: bound to their scope, unforgeable, the service's own error injected."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest

from palisade.common.page_tokens import (
    PageTokenKeyInvalid,
    PageTokens,
    load_page_token_key,
    scope,
)

MOMENT = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


class BadToken(Exception):
    pass


def _tokens(key: bytes | None = None) -> PageTokens:
    return PageTokens(key or secrets.token_bytes(32), invalid=BadToken)


def test_int_and_string_positions_read_back_in_their_scope() -> None:
    tokens = _tokens()
    bound = scope("chats", "user:usr_a", "ws_1", "open")
    assert tokens.read_int(tokens.issue(bound, MOMENT, 42), bound) == (MOMENT, 42)
    assert tokens.read_str(tokens.issue(bound, MOMENT, "cht_1"), bound) == (MOMENT, "cht_1")


def test_a_position_of_the_other_kind_is_refused() -> None:
    tokens = _tokens()
    bound = scope("chats")
    with pytest.raises(BadToken):
        tokens.read_int(tokens.issue(bound, MOMENT, "cht_1"), bound)
    with pytest.raises(BadToken):
        tokens.read_str(tokens.issue(bound, MOMENT, 7), bound)


@pytest.mark.parametrize(
    "other",
    [
        scope("chats", "user:usr_a", "ws_2", "open"),  # another workspace
        scope("chats", "user:usr_b", "ws_1", "open"),  # another caller
        scope("chats", "user:usr_a", "ws_1", "closed"),  # other filters
        scope("messages", "user:usr_a", "ws_1", "open"),  # another method
        scope("chats", "user:usr_a", "ws_1open"),  # parts run together
    ],
)
def test_a_token_is_refused_elsewhere(other: bytes) -> None:
    tokens = _tokens()
    token = tokens.issue(scope("chats", "user:usr_a", "ws_1", "open"), MOMENT, 1)
    with pytest.raises(BadToken):
        tokens.read(token, other)


@pytest.mark.parametrize(
    "forged",
    ["", "p1", "p1.x.y", "p1..", "x" * 500, "p1.e30.AAAA", "p1.ü.x", "p2.a.b"],
)
def test_forged_tokens(forged: str) -> None:
    with pytest.raises(BadToken):
        _tokens().read(forged, scope("mine", "user:usr_a"))


def test_a_changed_position_or_another_key_fails_the_mac() -> None:
    tokens = _tokens()
    bound = scope("mine", "user:usr_a")
    version, payload, mac = tokens.issue(bound, MOMENT, 42).split(".")
    other_payload = tokens.issue(bound, MOMENT, 43).split(".")[1]
    with pytest.raises(BadToken):
        tokens.read(f"{version}.{other_payload}.{mac}", bound)
    with pytest.raises(BadToken):
        _tokens().read(f"{version}.{payload}.{mac}", bound)


def test_the_key_file_is_created_once_and_reread(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    path = folder / "page-tokens.json"
    with pytest.raises(PageTokenKeyInvalid):
        load_page_token_key(path, create=False)
    key = load_page_token_key(path, create=True)
    assert load_page_token_key(path, create=True) == key
    assert load_page_token_key(path, create=False) == key
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("{}")
    with pytest.raises(PageTokenKeyInvalid):
        load_page_token_key(path, create=False)
