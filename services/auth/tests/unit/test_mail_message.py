"""Composing outgoing email: the headers a mail client needs, and no header injection."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.utils import parsedate_to_datetime

import pytest

from palisade.auth.mail import OutgoingEmail, build_message, parse_message

WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
FROM = "Palisade <no-reply@palisade.example>"
LINK = "https://app.example/v1/auth/magic?token=plsd_ml_" + "x" * 64


def _email(**overrides: object) -> OutgoingEmail:
    fields: dict[str, object] = {
        "to": "ada@example.com",
        "subject": "Your sign-in link",
        "text": f"Sign in:\n{LINK}\n",
    }
    fields.update(overrides)
    return OutgoingEmail(**fields)  # type: ignore[arg-type]


def _reparsed(email: OutgoingEmail, **kwargs: object):
    message = build_message(email, from_address=FROM, date=WHEN, **kwargs)  # type: ignore[arg-type]
    # What a mail client sees: the bytes on the wire (CRLF), parsed by a fresh parser.
    return message_from_bytes(message.as_bytes(policy=policy.SMTP), policy=policy.default)


def _text(part) -> str:
    return part.get_content().replace("\r\n", "\n")  # the parser keeps the wire's CRLF


def test_text_message_has_every_header_and_the_body() -> None:
    parsed = _reparsed(_email(), message_id="mail_abc123")
    assert parsed["From"].addresses[0].addr_spec == "no-reply@palisade.example"
    assert parsed["From"].addresses[0].display_name == "Palisade"
    assert str(parsed["To"]) == "ada@example.com"
    assert str(parsed["Subject"]) == "Your sign-in link"
    assert parsedate_to_datetime(str(parsed["Date"])) == WHEN
    assert str(parsed["Message-ID"]) == "<mail_abc123@palisade.example>"
    assert str(parsed["Auto-Submitted"]) == "auto-generated"
    assert not parsed.is_multipart()
    assert parsed.get_content_type() == "text/plain"
    assert _text(parsed) == f"Sign in:\n{LINK}\n"


def test_html_alternative_follows_the_text() -> None:
    parsed = _reparsed(_email(html=f'<p><a href="{LINK}">Sign in</a></p>'))
    assert parsed.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in parsed.iter_parts()]
    assert kinds == ["text/plain", "text/html"]  # clients show the last one they support
    assert LINK in parsed.get_body(preferencelist=("html",)).get_content()
    assert LINK in parsed.get_body(preferencelist=("plain",)).get_content()


def test_message_ids_are_unique_without_one_given() -> None:
    first = build_message(_email(), from_address=FROM, date=WHEN)
    second = build_message(_email(), from_address=FROM, date=WHEN)
    assert first["Message-ID"] != second["Message-ID"]
    assert str(first["Message-ID"]).endswith("@palisade.example>")


def test_non_ascii_subject_and_body_survive_the_wire() -> None:
    parsed = _reparsed(_email(subject="Ihr Anmeldelink für Zoë", text="Grüße, Zoë\n"))
    assert str(parsed["Subject"]) == "Ihr Anmeldelink für Zoë"
    assert _text(parsed) == "Grüße, Zoë\n"


def test_parse_message_reads_back_what_build_message_wrote() -> None:
    built = build_message(_email(), from_address=FROM, date=WHEN, message_id="mail_1")
    parsed = parse_message(bytes(built))
    assert str(parsed["Message-ID"]) == "<mail_1@palisade.example>"
    assert parsed.get_content() == built.get_content()


INJECTIONS = [
    "\r\nBcc: attacker@evil.example",
    "\nBcc: attacker@evil.example",
    "\rBcc: attacker@evil.example",
    "\u2028Bcc: attacker@evil.example",
    "\x85Bcc: attacker@evil.example",
    "\x00",
]


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize("field", ["to", "subject"])
def test_line_breaks_in_headers_are_refused(field: str, payload: str) -> None:
    value = {"to": "ada@example.com", "subject": "Hello"}[field] + payload
    with pytest.raises(ValueError, match="line breaks"):
        build_message(_email(**{field: value}), from_address=FROM, date=WHEN)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_line_breaks_in_the_sender_are_refused(payload: str) -> None:
    with pytest.raises(ValueError, match="line breaks"):
        build_message(_email(), from_address=FROM + payload, date=WHEN)


def test_line_breaks_in_the_message_id_are_refused() -> None:
    with pytest.raises(ValueError, match="line breaks"):
        build_message(_email(), from_address=FROM, date=WHEN, message_id="x\r\nBcc: a@b.c")


@pytest.mark.parametrize(
    "to",
    [
        "ada@example.com, attacker@evil.example",  # a second recipient
        "ada@example.com; attacker@evil.example",
        "undisclosed:ada@example.com,attacker@evil.example;",
        "ada",
        "@example.com",
        "",
    ],
)
def test_the_recipient_must_be_exactly_one_address(to: str) -> None:
    with pytest.raises(ValueError, match="exactly one address"):
        build_message(_email(to=to), from_address=FROM, date=WHEN)


def test_tabs_and_line_breaks_in_the_body_are_fine() -> None:
    parsed = _reparsed(_email(text="line one\r\nline two\n\tindented\n"))
    assert _text(parsed) == "line one\nline two\n\tindented\n"


def test_a_non_ascii_domain_is_sent_as_idna() -> None:
    parsed = _reparsed(_email(to="zoe@exämple.com"))
    assert str(parsed["To"]) == "zoe@xn--exmple-cua.com"


def test_a_non_ascii_local_part_is_refused_not_mangled() -> None:
    # It would need SMTPUTF8; an encoded-word in an address is not deliverable anywhere.
    with pytest.raises(ValueError, match="non-ASCII local part"):
        build_message(_email(to="zoë@example.com"), from_address=FROM, date=WHEN)


def test_a_display_name_may_be_non_ascii() -> None:
    parsed = _reparsed(_email(to="Zoë Ångström <zoe@example.com>"))
    [address] = parsed["To"].addresses
    assert (address.display_name, address.addr_spec) == ("Zoë Ångström", "zoe@example.com")
