"""Whose associated data is it: the first part names the service (issue 9 item 14)."""

from __future__ import annotations

import pytest

from palisade.common.aad import associated_data, owned_by, owner_of


@pytest.mark.parametrize(
    ("data", "owner"),
    [
        (associated_data("auth", "user", "u1", "totp_secret"), "auth"),
        (associated_data("visitors", "ws", "v", "email"), "visitors"),
        (b"auth/user.email", "auth"),  # auth's blind-index contexts
        (b"auth/backup_code", "auth"),
        (b"user.email", None),  # names nobody
        (b"/user.email", None),
        (b"", None),
        (b"pa1", None),  # truncated encodings
        (b"pa1\x00\x00\x00\x09auth", None),
        (associated_data(""), None),
        (b"\xff\xfe/x", None),
    ],
)
def test_owner_of(data: bytes, owner: str | None) -> None:
    assert owner_of(data) == owner


def test_an_encoding_cannot_pass_for_another_owner() -> None:
    # "auth/..." inside an encoding is still the encoding's first part.
    assert owner_of(associated_data("gateway", "auth/user.email")) == "gateway"
    assert owner_of(associated_data("auth/x", "y")) == "auth/x"


CORPUS = [
    associated_data("auth", "user", "u1", "totp_secret"),
    associated_data("visitors", "ws", "v", "email"),
    associated_data("gateway", "auth/user.email"),
    associated_data("auth/x", "y"),
    associated_data("authx", "y"),
    associated_data("aut", "h"),
    associated_data(""),
    associated_data("pa1"),
    associated_data("ä", "x"),
    b"auth/user.email",
    b"auth/",
    b"authx/user.email",
    b"auth",
    b"pa1/x",
    b"pa1",
    b"pa1\x00\x00\x00\x04aut",
    b"pa1\x00\x00\x00\x04auth",
    b"pa1\x00\x00\x00\x04authz",
    b"pa1\x00\x00\x00\x09auth",
    b"\xc3\xa4/x",
    b"\xff\xfe/x",
    b"/user.email",
    b"user.email",
    b"",
]


@pytest.mark.parametrize(
    "service", ["auth", "gateway", "visitors", "pa1", "", "auth/x", "ä", "aut"]
)
def test_owned_by_agrees_with_owner_of(service: str) -> None:
    """The fast check crypto runs per item is exactly the general rule."""
    for data in CORPUS:
        assert owned_by(data, service) == (owner_of(data) == service), (data, service)
