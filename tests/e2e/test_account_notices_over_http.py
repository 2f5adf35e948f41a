"""Security notices about one's own account (SECURITY.md 46), over HTTP with a real SMTP
catcher: a password change, backup codes regenerated, TOTP turned off, a passkey added and one
removed each send exactly one email to the account's address, with time, IP and device, and
none carries a secret (the new password, a backup code, the TOTP secret)."""

from __future__ import annotations

import asyncio
import uuid
from email.message import EmailMessage

import pyotp
import pytest
from softauthn import SoftAuthenticator

from .conftest import PASSKEY_ORIGIN, PASSWORD, Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

NEW_PASSWORD = "a brand new passphrase for notices"
BROWSER = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
SUBJECTS = {
    "password_changed": "Your Palisade password was changed",
    "backup_codes": "New backup codes were created for your Palisade account",
    "totp_disabled": "Two-step verification was turned off for your Palisade account",
    "passkey_added": "A passkey was added to your Palisade account",
    "passkey_removed": "A passkey was removed from your Palisade account",
}


def _text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


async def _notice(suite: Suite, email: str, subject: str) -> str:
    """The text of the notice with that subject, once the relay has delivered it."""
    async with asyncio.timeout(10):
        while True:
            for message in suite.mail.to(email):
                if message["Subject"] == subject:
                    return _text(message)
            suite.mail.arrived.clear()
            await suite.mail.arrived.wait()


def _assert_context(text: str) -> None:
    assert "When: " in text
    assert " UTC" in text
    assert "IP address: 127.0.0.1" in text
    assert "Device: Chrome" in text
    assert "Linux" in text
    assert "Palisade never asks for your password" in text


async def test_each_account_change_is_told_once_and_never_with_a_secret(suite: Suite) -> None:
    email = f"notices-{uuid.uuid4().hex[:10]}@example.com"
    access = (await suite.sign_up_and_log_in(email))["accessToken"]
    browser = {"User-Agent": BROWSER}

    async def call(method: str, path: str, body: object = None) -> dict:
        status, answer, _ = await suite.json_call(
            method, path, token=access, json=body, headers=browser
        )
        assert status in (200, 201, 204), (path, status, answer)
        return answer or {}

    await call(
        "POST", "/v1/me/password", {"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD}
    )
    text = await _notice(suite, email, SUBJECTS["password_changed"])
    _assert_context(text)
    assert NEW_PASSWORD not in text
    assert PASSWORD not in text

    secret = (await call("POST", "/v1/me/totp"))["secret"]
    code = pyotp.TOTP(secret).at(suite.clock.now())
    first_codes = (await call("POST", "/v1/me/totp/confirm", {"code": code}))["backupCodes"]
    new_codes = (await call("POST", "/v1/me/backup-codes"))["backupCodes"]
    text = await _notice(suite, email, SUBJECTS["backup_codes"])
    _assert_context(text)
    assert not any(c in text for c in [*first_codes, *new_codes, secret])

    await call("DELETE", "/v1/me/totp")
    text = await _notice(suite, email, SUBJECTS["totp_disabled"])
    _assert_context(text)
    assert secret not in text

    options = await call("POST", "/v1/me/passkeys/options", {})
    credential = SoftAuthenticator(origin=PASSKEY_ORIGIN).create(options["publicKey"])
    passkey_id = (
        await call(
            "POST",
            "/v1/me/passkeys",
            {
                "challengeId": options["challengeId"],
                "credential": credential,
                "name": "Work laptop",
            },
        )
    )["passkeyId"]
    text = await _notice(suite, email, SUBJECTS["passkey_added"])
    _assert_context(text)
    assert "Passkey: Work laptop" in text

    await call("DELETE", f"/v1/me/passkeys/{passkey_id}")
    text = await _notice(suite, email, SUBJECTS["passkey_removed"])
    assert "Passkey: Work laptop" in text

    # Delivered in order: by now every earlier notice has arrived, and each exactly once.
    subjects = [m["Subject"] for m in suite.mail.to(email)]
    for subject in SUBJECTS.values():
        assert subjects.count(subject) == 1, (subject, subjects)


async def test_a_failed_change_tells_nobody(suite: Suite) -> None:
    email = f"notices-{uuid.uuid4().hex[:10]}@example.com"
    access = (await suite.sign_up_and_log_in(email))["accessToken"]
    status, _, _ = await suite.json_call(
        "POST",
        "/v1/me/password",
        token=access,
        json={"currentPassword": "not the password at all", "newPassword": NEW_PASSWORD},
    )
    assert status == 401
    status, _, _ = await suite.json_call("DELETE", "/v1/me/totp", token=access)
    assert status in (400, 404, 409)
    # A change that did happen afterwards is told; the refused ones before it were not.
    await suite.json_call(
        "POST",
        "/v1/me/password",
        token=access,
        json={"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD},
    )
    await _notice(suite, email, SUBJECTS["password_changed"])
    subjects = [m["Subject"] for m in suite.mail.to(email)]
    assert subjects.count(SUBJECTS["password_changed"]) == 1
    assert SUBJECTS["totp_disabled"] not in subjects
