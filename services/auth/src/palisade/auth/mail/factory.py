"""Chooses the mailer from settings: SMTP when a host is configured, else .eml files."""

from __future__ import annotations

from palisade.auth.config import AuthSettings
from palisade.auth.mail.senders import DirectoryMailer, Mailer, SmtpMailer


def build_mailer(settings: AuthSettings) -> Mailer:
    """SmtpMailer if smtp_host is set; otherwise DirectoryMailer in mail_dir (<data dir>/mail)."""
    if settings.smtp_host:
        return SmtpMailer(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            security=settings.smtp_security,
            timeout=settings.smtp_timeout_seconds,
        )
    return DirectoryMailer(settings.mail_dir or settings.data_dir / "mail")
