"""MailQueue.seal: the whole message encrypted, bound to its row id; the in-process wake-up."""

from __future__ import annotations

import asyncio
import os
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from palisade.auth.mail import MailQueue, OutgoingEmail, message_aad, parse_message
from palisade.common.clock import ManualClock
from palisade.common.crypto_client import CryptoFailure

RECIPIENT = "katherine.johnson@example.com"
TOKEN = "plsd_ml_Zm9vYmFyYmF6cXV4"


class AesGcmCrypto:
    """CryptoClient's encrypt/decrypt, done locally with real AES-GCM and associated data."""

    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self.calls = 0

    async def encrypt(self, items):
        self.calls += 1
        out = []
        for plaintext, aad in items:
            nonce = os.urandom(12)
            out.append(nonce + self._aead.encrypt(nonce, plaintext, aad))
        return out

    async def decrypt(self, items):
        self.calls += 1
        try:
            return [self._aead.decrypt(ct[:12], ct[12:], aad) for ct, aad in items]
        except InvalidTag:
            raise CryptoFailure() from None


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC))


@pytest.fixture
def crypto() -> AesGcmCrypto:
    return AesGcmCrypto()


@pytest.fixture
def queue(crypto, clock) -> MailQueue:
    return MailQueue(crypto=crypto, clock=clock, from_address="Palisade <no-reply@p.example>")


def _email(**overrides: object) -> OutgoingEmail:
    fields: dict[str, object] = {
        "to": RECIPIENT,
        "subject": "Sign in to Palisade",
        "text": f"https://app.example/magic#{TOKEN}\n",
    }
    fields.update(overrides)
    return OutgoingEmail(**fields)  # type: ignore[arg-type]


async def test_seal_encrypts_the_whole_message(queue, crypto, clock) -> None:
    sealed = await queue.seal(_email())
    assert re.fullmatch(r"mail_[0-9a-f]{32}", sealed.id)
    for plaintext in (RECIPIENT, TOKEN, "Sign in to Palisade", "no-reply"):
        assert plaintext.encode() not in sealed.message_ct
    assert TOKEN not in repr(sealed)

    [raw] = await crypto.decrypt([(sealed.message_ct, message_aad(sealed.id))])
    message = parse_message(raw)
    assert str(message["To"]) == RECIPIENT
    assert str(message["Message-ID"]) == f"<{sealed.id}@p.example>"
    assert parsedate_to_datetime(str(message["Date"])) == clock.now()
    assert message.get_content() == f"https://app.example/magic#{TOKEN}\n"


async def test_the_ciphertext_opens_only_for_its_own_row(queue, crypto) -> None:
    first, second = await queue.seal(_email()), await queue.seal(_email())
    assert first.id != second.id
    with pytest.raises(CryptoFailure):
        await crypto.decrypt([(first.message_ct, message_aad(second.id))])


async def test_a_bad_header_is_refused_before_anything_is_encrypted(queue, crypto) -> None:
    with pytest.raises(ValueError):
        await queue.seal(_email(to=RECIPIENT + "\r\nBcc: attacker@evil.example"))
    with pytest.raises(ValueError):
        await queue.seal(_email(subject="Hi\nBcc: attacker@evil.example"))
    assert crypto.calls == 0


async def test_an_oversized_message_is_refused(queue, crypto) -> None:
    with pytest.raises(ValueError, match="bytes"):
        await queue.seal(_email(text="x" * 70_000))
    assert crypto.calls == 0


@pytest.mark.parametrize(
    "sender", ["", "no-reply", "a@x.example, b@y.example", "Palisade <a@x.example>\r\nBcc: b@y"]
)
def test_a_malformed_sender_fails_at_construction(crypto, clock, sender: str) -> None:
    with pytest.raises(ValueError):
        MailQueue(crypto=crypto, clock=clock, from_address=sender)


async def test_wait_returns_only_after_notify_and_consumes_it(queue) -> None:
    waiter = asyncio.create_task(queue.wait())
    for _ in range(5):
        await asyncio.sleep(0)  # let the waiter run; no time passes
    assert not waiter.done()
    queue.notify()
    await asyncio.wait_for(waiter, timeout=5)

    queue.notify()  # a notice given while nobody waits is kept for the next wait...
    await asyncio.wait_for(queue.wait(), timeout=5)
    again = asyncio.create_task(queue.wait())  # ...and consumed by it
    for _ in range(5):
        await asyncio.sleep(0)
    assert not again.done()
    again.cancel()
