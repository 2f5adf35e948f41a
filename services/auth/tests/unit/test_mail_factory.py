"""build_mailer: SMTP when a host is configured, else .eml files in the data dir."""

from __future__ import annotations

from pathlib import Path

from palisade.auth.config import AuthSettings
from palisade.auth.mail import DirectoryMailer, SmtpMailer, build_mailer


def test_without_an_smtp_host_mail_goes_to_the_data_dir(tmp_path: Path) -> None:
    mailer = build_mailer(AuthSettings(data_dir=tmp_path, smtp_host=None, mail_dir=None))
    assert isinstance(mailer, DirectoryMailer)
    assert mailer.directory == tmp_path / "mail"


def test_mail_dir_overrides_the_default_folder(tmp_path: Path) -> None:
    settings = AuthSettings(data_dir=tmp_path, smtp_host=None, mail_dir=tmp_path / "outbox")
    mailer = build_mailer(settings)
    assert isinstance(mailer, DirectoryMailer)
    assert mailer.directory == tmp_path / "outbox"


def test_an_smtp_host_selects_smtp(tmp_path: Path) -> None:
    settings = AuthSettings(
        data_dir=tmp_path,
        smtp_host="smtp.example",
        smtp_username="palisade",
        smtp_password="hunter2",  # type: ignore[arg-type]
    )
    assert isinstance(build_mailer(settings), SmtpMailer)
    # Delivery through it, against a real server, is in tests/integration/test_mail_smtp.py.
