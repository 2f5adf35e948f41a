"""DirectoryMailer, the embedded default: private, whole, parseable .eml files sorted by time."""

from __future__ import annotations

import logging
import os
import stat
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from palisade.auth.mail import (
    DirectoryMailer,
    MailDeliveryFailed,
    OutgoingEmail,
    build_message,
)
from palisade.common.clock import ManualClock
from palisade.common.logs import JsonFormatter

RECIPIENT = "grace.hopper@example.com"
SECRET_LINK = "https://app.example/magic?token=plsd_ml_s3cr3tt0k3n"


def _message(n: int = 0, html: str | None = None):
    email = OutgoingEmail(
        to=RECIPIENT, subject=f"Sign in ({n})", text=f"Your link: {SECRET_LINK}\n", html=html
    )
    return build_message(
        email,
        from_address="Palisade <no-reply@palisade.example>",
        date=datetime(2026, 1, 1, tzinfo=UTC),
        message_id=f"mail_{n}",
    )


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_writes_a_parseable_eml_file_private_to_the_owner(tmp_path: Path) -> None:
    folder = tmp_path / "var" / "mail"  # does not exist yet
    await DirectoryMailer(folder).send(_message(html="<p>hi</p>"))

    assert _mode(folder) == 0o700
    [path] = list(folder.iterdir())
    assert path.suffix == ".eml"
    assert _mode(path) == 0o600
    parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert str(parsed["To"]) == RECIPIENT
    assert str(parsed["Subject"]) == "Sign in (0)"
    assert str(parsed["Message-ID"]) == "<mail_0@palisade.example>"
    assert parsed.get_body(preferencelist=("plain",)).get_content() == f"Your link: {SECRET_LINK}\n"
    assert parsed.get_body(preferencelist=("html",)).get_content() == "<p>hi</p>\n"


async def test_file_names_are_unique_and_sort_by_time(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC))
    mailer = DirectoryMailer(tmp_path, clock=clock)
    for n in range(3):
        await mailer.send(_message(n))
        clock.advance(0.001)  # a millisecond apart: finer than the name's seconds
    await mailer.send(_message(3))  # the same instant as the previous one
    names = _names(tmp_path)
    assert len(names) == 4
    assert names[0].startswith("20260506T070809000000Z-")
    subjects = [
        str(message_from_bytes((tmp_path / n).read_bytes(), policy=policy.default)["Subject"])
        for n in names
    ]
    assert subjects[:2] == ["Sign in (0)", "Sign in (1)"]
    assert sorted(subjects[2:]) == ["Sign in (2)", "Sign in (3)"]


async def test_a_failed_write_leaves_no_file_behind(tmp_path: Path, monkeypatch) -> None:
    mailer = DirectoryMailer(tmp_path)
    await mailer.send(_message(0))
    before = _names(tmp_path)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the write fails after some bytes went out
    with pytest.raises(MailDeliveryFailed) as caught:
        await mailer.send(_message(1))
    assert caught.value.reason == "OSError"
    # Neither the message nor its temporary file remains; the earlier message is untouched.
    assert _names(tmp_path) == before


async def test_a_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mail"
    folder.mkdir()
    folder.chmod(0o777)  # anyone could swap a message (or a sign-in link) in there
    with pytest.raises(MailDeliveryFailed) as caught:
        await DirectoryMailer(folder).send(_message())
    assert caught.value.reason == "InsecureSecretPath"
    assert list(folder.iterdir()) == []


async def test_failures_and_logs_never_name_the_recipient_or_the_link(
    tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "blocked").write_text("a file where the folder should be")
    with pytest.raises(MailDeliveryFailed) as caught:
        await DirectoryMailer(tmp_path / "blocked" / "mail").send(_message())
    await DirectoryMailer(tmp_path / "ok").send(_message(1))
    # The JSON lines production writes, extras included.
    logged = "".join(JsonFormatter("auth").format(r) for r in caplog.records)
    told = str(caught.value) + repr(caught.value) + logged
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert "mail_1@palisade.example" in logged  # the success is logged by message id
    for secret in (RECIPIENT, "s3cr3tt0k3n", str(tmp_path)):
        assert secret not in told
