"""SmtpMailer against a real SMTP server (aiosmtpd) on a free port: delivery, refusals, TLS."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from palisade.auth.config import AuthSettings
from palisade.auth.mail import (
    MailDeliveryFailed,
    OutgoingEmail,
    SmtpMailer,
    build_mailer,
    build_message,
)

RECIPIENT = "dorothy.vaughan@example.com"
LINK = "https://app.example/v1/auth/magic#plsd_ml_" + "Q" * 43


@dataclass
class Recorder:
    """An aiosmtpd handler: keeps what arrives; refuses at RCPT or DATA when told to."""

    envelopes: list = field(default_factory=list)
    tls_sessions: list = field(default_factory=list)
    refuse_rcpt: str | None = None
    refuse_data: str | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse_rcpt:
            return self.refuse_rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.refuse_data:
            return self.refuse_data
        self.envelopes.append(envelope)
        self.tls_sessions.append(session.ssl is not None)
        return "250 Message accepted for delivery"


class FreePortController(Controller):
    """Binds port 0 and learns the port the kernel chose (no race for a "free" port)."""

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@pytest.fixture
def smtp_server() -> Iterator[tuple[FreePortController, Recorder]]:
    handler = Recorder()
    controller = FreePortController(
        handler, hostname="127.0.0.1", port=0, server_hostname="smtp.test"
    )
    controller.start()
    try:
        yield controller, handler
    finally:
        controller.stop()


def _tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh self-signed certificate, and a client context trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


def _message(html: str | None = None):
    email = OutgoingEmail(
        to=RECIPIENT, subject="Your sign-in link — Palisade", text=f"{LINK}\n", html=html
    )
    return build_message(
        email,
        from_address="Palisade <no-reply@palisade.example>",
        date=datetime(2026, 1, 1, tzinfo=UTC),
        message_id="mail_smtp1",
    )


def _received(handler: Recorder):
    [envelope] = handler.envelopes
    return envelope, message_from_bytes(envelope.original_content, policy=policy.default)


async def test_delivers_to_the_recipient_with_subject_and_body(smtp_server) -> None:
    controller, handler = smtp_server
    mailer = SmtpMailer(host="127.0.0.1", port=controller.port, security="none", timeout=5)
    await mailer.send(_message(html=f'<a href="{LINK}">Sign in</a>'))

    envelope, received = _received(handler)
    assert envelope.mail_from == "no-reply@palisade.example"
    assert envelope.rcpt_tos == [RECIPIENT]
    assert str(received["To"]) == RECIPIENT
    assert str(received["Subject"]) == "Your sign-in link — Palisade"
    assert str(received["Message-ID"]) == "<mail_smtp1@palisade.example>"
    plain = received.get_body(preferencelist=("plain",)).get_content()
    assert plain.replace("\r\n", "\n") == f"{LINK}\n"
    assert LINK in received.get_body(preferencelist=("html",)).get_content()


async def test_build_mailer_wires_the_settings_to_a_working_smtp_mailer(
    smtp_server, tmp_path: Path
) -> None:
    controller, handler = smtp_server
    settings = AuthSettings(
        data_dir=tmp_path,
        smtp_host="127.0.0.1",
        smtp_port=controller.port,
        smtp_security="none",
        smtp_timeout_seconds=5,
    )
    await build_mailer(settings).send(_message())
    envelope, _ = _received(handler)
    assert envelope.rcpt_tos == [RECIPIENT]
    assert not (tmp_path / "mail").exists()


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [
        (
            {"refuse_rcpt": "550 5.1.1 <dorothy.vaughan@example.com>: no such user"},
            "SMTPRecipientsRefused 550",
        ),
        ({"refuse_data": "554 5.7.1 message refused"}, "SMTPDataError 554"),
    ],
)
async def test_a_refusal_raises_mail_delivery_failed_without_the_address(
    smtp_server, refusal: dict[str, str], reason: str
) -> None:
    controller, handler = smtp_server
    for attribute, reply in refusal.items():
        setattr(handler, attribute, reply)
    mailer = SmtpMailer(host="127.0.0.1", port=controller.port, security="none", timeout=5)
    with pytest.raises(MailDeliveryFailed) as caught:
        await mailer.send(_message())
    assert caught.value.reason == reason
    # The server's reply quoted the address; neither the error nor its chain may.
    assert RECIPIENT not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert handler.envelopes == []


async def test_an_unreachable_server_raises_mail_delivery_failed() -> None:
    with socket.socket() as bound:  # a port held but not listening: connection refused
        bound.bind(("127.0.0.1", 0))
        mailer = SmtpMailer(
            host="127.0.0.1", port=bound.getsockname()[1], security="none", timeout=5
        )
        with pytest.raises(MailDeliveryFailed):
            await mailer.send(_message())


@pytest.fixture
def tls_server(tmp_path: Path):
    server_tls, client_tls = _tls_pair(tmp_path)
    handler = Recorder()
    started = []

    def start(**kwargs: object) -> FreePortController:
        controller = FreePortController(
            handler, hostname="127.0.0.1", port=0, server_hostname="smtp.test", **kwargs
        )
        controller.start()
        started.append(controller)
        return controller

    try:
        yield start, handler, server_tls, client_tls
    finally:
        for controller in started:
            controller.stop()


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"palisade",
        b"s3cret",
    )
    return AuthResult(success=ok, handled=False)  # unhandled: the server answers 535


async def test_starttls_with_login_delivers_over_tls(tls_server) -> None:
    start, handler, server_tls, client_tls = tls_server
    controller = start(
        tls_context=server_tls,
        require_starttls=True,
        authenticator=_authenticator,
        auth_required=True,
    )
    mailer = SmtpMailer(
        host="127.0.0.1",
        port=controller.port,
        username="palisade",
        password="s3cret",
        security="starttls",
        timeout=5,
        tls_context=client_tls,
    )
    await mailer.send(_message())
    assert handler.tls_sessions == [True]
    assert _received(handler)[0].rcpt_tos == [RECIPIENT]


async def test_a_wrong_password_raises_mail_delivery_failed(tls_server) -> None:
    start, handler, server_tls, client_tls = tls_server
    controller = start(tls_context=server_tls, authenticator=_authenticator, auth_required=True)
    mailer = SmtpMailer(
        host="127.0.0.1",
        port=controller.port,
        username="palisade",
        password="wrong",
        security="starttls",
        timeout=5,
        tls_context=client_tls,
    )
    with pytest.raises(MailDeliveryFailed) as caught:
        await mailer.send(_message())
    assert caught.value.reason == "SMTPAuthenticationError 535"
    assert handler.envelopes == []


async def test_starttls_is_never_silently_skipped(smtp_server) -> None:
    controller, handler = smtp_server  # offers no STARTTLS
    mailer = SmtpMailer(host="127.0.0.1", port=controller.port, security="starttls", timeout=5)
    with pytest.raises(MailDeliveryFailed):
        await mailer.send(_message())
    assert handler.envelopes == []


async def test_a_certificate_we_do_not_trust_is_refused(tls_server) -> None:
    start, handler, server_tls, _ = tls_server
    controller = start(tls_context=server_tls)
    mailer = SmtpMailer(  # the system's trust store: the self-signed certificate is not in it
        host="127.0.0.1", port=controller.port, security="starttls", timeout=5
    )
    with pytest.raises(MailDeliveryFailed):
        await mailer.send(_message())
    assert handler.envelopes == []


async def test_implicit_tls_delivers(tls_server) -> None:
    start, handler, server_tls, client_tls = tls_server
    controller = start(ssl_context=server_tls)  # TLS from the first byte (port 465 style)
    mailer = SmtpMailer(
        host="127.0.0.1", port=controller.port, security="tls", timeout=5, tls_context=client_tls
    )
    await mailer.send(_message())
    assert _received(handler)[0].rcpt_tos == [RECIPIENT]


def test_a_username_without_a_password_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        SmtpMailer(host="smtp.example", port=587, username="palisade")
    with pytest.raises(ValueError):
        SmtpMailer(host="smtp.example", port=587, security="ssl")  # type: ignore[arg-type]
