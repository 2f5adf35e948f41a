"""Standard Webhooks signing, checked against the independent `standardwebhooks` package
(SECURITY.md 36): it verifies our signatures, and refuses them after a tampered body, under a
wrong secret, or with a stale timestamp; during a rotation both secrets verify."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from palisade.webhooks import signing
from palisade.webhooks.signing import (
    InvalidMessage,
    InvalidSecret,
    generate_secret,
    parse_secret,
    sign,
    signed_headers,
    verify,
)

BODY = json.dumps(
    {"type": "chat.message.created", "timestamp": "2026-12-04T01:00:00Z", "data": {"id": "m1"}},
    separators=(",", ":"),
).encode()
MSG_ID = "0123456789abcdef0123456789abcdef"


def _now() -> int:
    # The library checks the timestamp against the real clock; so must its inputs.
    return int(time.time())


def test_generated_secret_has_the_documented_form() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    assert len(key) == 32
    assert parse_secret(secret) == key
    assert generate_secret() != secret


def test_signature_verifies_with_the_standardwebhooks_package() -> None:
    secret = generate_secret()
    headers = signed_headers([secret], MSG_ID, _now(), BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_signature_is_hmac_sha256_over_id_timestamp_body() -> None:
    secret = generate_secret()
    expected = hmac.new(
        parse_secret(secret), f"{MSG_ID}.1700000000.".encode() + BODY, hashlib.sha256
    ).digest()
    assert sign([secret], MSG_ID, 1700000000, BODY) == "v1," + base64.b64encode(expected).decode()


def test_tampered_body_fails() -> None:
    secret = generate_secret()
    headers = signed_headers([secret], MSG_ID, _now(), BODY)
    tampered = BODY.replace(b'"m1"', b'"m2"')
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, headers)


def test_tampered_id_or_timestamp_fails() -> None:
    secret = generate_secret()
    now = _now()
    headers = signed_headers([secret], MSG_ID, now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": MSG_ID[:-1] + "0"})
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-timestamp": str(now - 1)})


def test_wrong_secret_fails() -> None:
    headers = signed_headers([generate_secret()], MSG_ID, _now(), BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(generate_secret()).verify(BODY, headers)


def test_stale_timestamp_fails_beyond_the_library_tolerance() -> None:
    secret = generate_secret()
    # Five minutes is the package's tolerance; ten is well past it, and the signature itself
    # is right (so the timestamp alone is what fails).
    stale = _now() - 600
    headers = signed_headers([secret], MSG_ID, stale, BODY)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(BODY, headers)
    future = _now() + 600
    with pytest.raises(WebhookVerificationError, match="too new"):
        Webhook(secret).verify(BODY, signed_headers([secret], MSG_ID, future, BODY))
    # Inside the tolerance the same secret verifies: the failures above are the timestamp's.
    Webhook(secret).verify(BODY, signed_headers([secret], MSG_ID, _now() - 60, BODY))


def test_rotation_overlap_both_secrets_verify() -> None:
    new, old = generate_secret(), generate_secret()
    headers = signed_headers([new, old], MSG_ID, _now(), BODY)
    parts = headers["webhook-signature"].split(" ")
    assert len(parts) == 2
    assert all(part.startswith("v1,") for part in parts)
    assert Webhook(new).verify(BODY, headers) == json.loads(BODY)
    assert Webhook(old).verify(BODY, headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)
    # After the overlap only the new secret signs: the old one no longer verifies.
    after = signed_headers([new], MSG_ID, _now(), BODY)
    Webhook(new).verify(BODY, after)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(BODY, after)


def test_duplicate_secrets_sign_once() -> None:
    secret = generate_secret()
    assert sign([secret, secret], MSG_ID, 1, BODY) == sign([secret], MSG_ID, 1, BODY)


def test_own_verify_agrees_with_the_library() -> None:
    new, old = generate_secret(), generate_secret()
    now = _now()
    header = sign([new, old], MSG_ID, now, BODY)
    common = {"msg_id": MSG_ID, "timestamp": str(now), "signature_header": header}
    assert verify([old], body=BODY, now=now, **common)
    assert verify([new], body=BODY, now=now + 299, **common)
    assert not verify([generate_secret()], body=BODY, now=now, **common)
    assert not verify([new], body=BODY + b" ", now=now, **common)
    assert not verify([new], body=BODY, now=now + 301, **common)
    assert not verify([new], body=BODY, now=now - 301, **common)
    # Other schemes and garbage in the header are skipped, not fatal.
    noisy = f"v1a,AAAA garbage v1,!!! {header}"
    assert verify([new], body=BODY, now=now, **{**common, "signature_header": noisy})
    for bad_timestamp in ("", "-5", "1.5", "１２", "99999999999999"):
        assert not verify([new], body=BODY, now=now, **{**common, "timestamp": bad_timestamp})


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "whsec_",
        "whsk_" + base64.b64encode(bytes(32)).decode(),
        base64.b64encode(bytes(32)).decode(),
        "whsec_" + base64.b64encode(bytes(24)).decode(),
        "whsec_" + base64.b64encode(bytes(33)).decode(),
        "whsec_" + base64.b64encode(bytes(32)).decode().rstrip("="),
        "whsec_" + base64.b64encode(bytes(32)).decode()[:-2] + "B=",  # non-canonical tail
        "whsec_" + base64.urlsafe_b64encode(b"\xff" * 32).decode(),
        "whsec_ " + base64.b64encode(bytes(32)).decode(),
        "whsec_" + base64.b64encode(bytes(32)).decode() + "\n",
    ],
)
def test_malformed_secrets_are_refused(secret: str) -> None:
    with pytest.raises(InvalidSecret) as caught:
        parse_secret(secret)
    # The message never echoes the secret text.
    body = secret.removeprefix("whsec_").strip()
    if body:
        assert body not in str(caught.value)
    assert not signing.is_valid_secret(secret)


@pytest.mark.parametrize("msg_id", ["", "a.b", "a b", "a\nb", "é", "x" * 257])
def test_unsafe_message_ids_are_refused(msg_id: str) -> None:
    with pytest.raises(InvalidMessage):
        sign([generate_secret()], msg_id, 1, BODY)


@pytest.mark.parametrize("timestamp", [-1, True, 1.5])
def test_unsafe_timestamps_are_refused(timestamp: object) -> None:
    with pytest.raises(InvalidMessage):
        sign([generate_secret()], MSG_ID, timestamp, BODY)  # type: ignore[arg-type]


def test_no_secret_is_refused() -> None:
    with pytest.raises(InvalidSecret):
        sign([], MSG_ID, 1, BODY)
