"""The rules on message bodies and search queries, and who a caller is to chats."""

from __future__ import annotations

import pytest

from palisade.common.caller import Caller
from palisade.common.errors import PermissionDenied
from palisade.visitors.chats.access import READ, WRITE, chat_scope, mode_of, sender_of
from palisade.visitors.chats.errors import (
    BodyTooLong,
    InvalidBody,
    InvalidPageSize,
    InvalidQuery,
)
from palisade.visitors.chats.service import page_size
from palisade.visitors.chats.text import clean_body, fts5_query, query_words, tsquery_text
from palisade.visitors.errors import KeyClaimsMissing, NotAWorkspaceCaller

WS = "ws_" + "a" * 32


def test_bodies_are_trimmed_and_keep_tabs_and_newlines() -> None:
    assert clean_body("  hi\tthere\r\nfriend \n") == "hi\tthere\r\nfriend"
    assert clean_body("x" * 10_000) == "x" * 10_000
    assert clean_body(" " * 50 + "x" * 10_000 + "\n" * 50) == "x" * 10_000
    assert clean_body("😀" * 10_000) == "😀" * 10_000  # characters, not bytes


@pytest.mark.parametrize("char", [chr(c) for c in [*range(0, 9), 11, 12, *range(14, 32), 127]])
def test_every_c0_control_but_tab_and_newlines_is_refused(char: str) -> None:
    with pytest.raises(InvalidBody):
        clean_body(f"a{char}b")


@pytest.mark.parametrize("char", [chr(c) for c in range(0x80, 0xA0)])
def test_c1_controls_are_refused(char: str) -> None:
    with pytest.raises(InvalidBody):
        clean_body(f"a{char}b")


def test_empty_too_long_and_unencodable_bodies() -> None:
    for body in ("", " ", "\n\t\r\n", "\u3000"):
        with pytest.raises(InvalidBody):
            clean_body(body)
    with pytest.raises(BodyTooLong):
        clean_body("x" * 10_001)
    with pytest.raises(InvalidBody):
        clean_body("half a pair \udc00")


def test_query_words_drop_every_operator_and_punctuation() -> None:
    assert query_words('"refund" OR (order* -NEAR:2) ^x & y | !z') == (
        "refund",
        "or",
        "order",
        "near",
        "2",
        "x",
        "y",
        "z",
    )
    assert query_words("refund_order's") == ("refund", "order", "s")
    assert query_words("Refund refund REFUND") == ("refund",)
    assert query_words("e\u0301te\u0301 退款 ÅSA") == ("été", "退款", "åsa")


@pytest.mark.parametrize("query", ["", "  ", '"', "*:()^&|!'-", "_", "🔥🔥", "x" * 201])
def test_queries_without_words_or_too_long_are_invalid(query: str) -> None:
    with pytest.raises(InvalidQuery):
        query_words(query)


def test_query_length_counts_after_trimming() -> None:
    assert query_words("  " + "a" * 200 + "  ") == ("a" * 200,)


def test_backend_queries_quote_or_join_the_words() -> None:
    words = ("near", "or", "refund")
    assert fts5_query(words) == '"near" "or" "refund"'
    assert tsquery_text(words) == "near or refund"


def test_page_sizes() -> None:
    assert page_size(0) == 50
    assert page_size(1) == 1
    assert page_size(100) == 100
    for bad in (-1, 101, 2**31 - 1):
        with pytest.raises(InvalidPageSize):
            page_size(bad)


def _caller(principal: str, **claims: object) -> Caller:
    values: dict[str, object] = {"workspace_id": WS}
    values.update(claims)
    return Caller(
        issuer="gateway",
        audience="visitors",
        principal=principal,
        request_id="r",
        issued_at=0,
        expires_at=60,
        **values,  # type: ignore[arg-type]
    )


def test_callers_map_to_workspace_mode_and_sender() -> None:
    person = chat_scope(_caller("user:usr_1"), needs=WRITE)
    assert (person.workspace_id, person.test, sender_of(person)) == (WS, False, "agent")
    scopes = (READ, WRITE)
    live = chat_scope(
        _caller("apikey:key_1", key_mode="live", key_type="secret", scopes=scopes), needs=READ
    )
    assert (live.test, sender_of(live), mode_of(live)) == (False, "agent", "live")
    test = chat_scope(
        _caller("apikey:key_1", key_mode="test", key_type="secret", scopes=scopes), needs=READ
    )
    assert (test.test, sender_of(test), mode_of(test)) == (True, "agent", "test")
    widget = chat_scope(
        _caller("apikey:key_1", key_mode="test", key_type="publishable", scopes=scopes),
        needs=WRITE,
    )
    assert (widget.test, sender_of(widget)) == (True, "visitor")
    # A person is never in test mode, whatever the assertion says.
    assert not chat_scope(_caller("user:usr_1", key_mode="test"), needs=READ).test


def test_callers_without_a_workspace_or_scope_are_refused() -> None:
    for caller in (
        _caller("user:usr_1", workspace_id=None),
        _caller("service:gateway"),
        _caller("anonymous"),
    ):
        with pytest.raises(NotAWorkspaceCaller):
            chat_scope(caller, needs=READ)
    with pytest.raises(PermissionDenied):
        chat_scope(
            _caller("apikey:key_1", key_mode="live", key_type="secret", scopes=(WRITE,)),
            needs=READ,
        )
    # An API key's assertion without its type or mode is refused, not read as secret / live.
    for claims in ({"key_mode": "live"}, {"key_type": "publishable"}, {"key_type": "other"}):
        with pytest.raises(KeyClaimsMissing):
            chat_scope(_caller("apikey:key_1", scopes=(READ, WRITE), **claims), needs=WRITE)
