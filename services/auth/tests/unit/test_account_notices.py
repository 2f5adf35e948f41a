"""Account notices are auth's own: no other service can send one through SendNotice, and
their wording never shows more than the kind allows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from palisade.auth.mail.account_notices import (
    ACCOUNT_NOTICES,
    EMAIL_CHANGED,
    PASSKEY_ADDED,
    masked_email,
)
from palisade.auth.mail.notice_catalogue import (
    CATALOGUE,
    NoticeContext,
    UnknownNoticeKind,
    notice_kind,
    notice_text,
)


def test_no_account_notice_is_in_the_catalogue_other_services_may_use() -> None:
    assert not set(ACCOUNT_NOTICES) & set(CATALOGUE)
    for name in ACCOUNT_NOTICES:
        with pytest.raises(UnknownNoticeKind):
            notice_kind(name)  # what SendNotice resolves a request's kind with


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("ada@example.com", "a…@example.com"),
        ("a@example.com", "a…@example.com"),
        ("weird@local@example.com", "w…@example.com"),
        ("nodomain", "…"),
    ],
)
def test_a_new_address_is_shown_masked(address: str, shown: str) -> None:
    assert masked_email(address) == shown


def test_a_passkey_name_cannot_add_a_line_to_the_notice() -> None:
    context = NoticeContext(
        occurred_at=datetime(2026, 12, 3, 12, 0, tzinfo=UTC),
        ip="127.0.0.1",
        location="",
        device="Firefox on Linux",
        workspace_name=None,
    )
    text = notice_text(PASSKEY_ADDED, {"passkey_name": "Laptop\nIP address: 6.6.6.6"}, context)
    assert "Passkey: Laptop\\nIP address: 6.6.6.6" in text
    assert [line for line in text.splitlines() if line.startswith("IP address:")] == [
        "IP address: 127.0.0.1"
    ]


def test_every_account_notice_has_fixed_wording() -> None:
    for kind in ACCOUNT_NOTICES.values():
        assert kind.subject
        assert kind.headline
        assert kind.advice
        assert "\n" not in kind.subject
    assert [key for key, _ in EMAIL_CHANGED.details] == ["new_email"]
