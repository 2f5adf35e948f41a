"""history_seal without a crypto service: which entries are sealed, and what a revocation
writes when crypto cannot seal (never the plaintext client of a person)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from palisade.apikeys.history_seal import HistorySeal, needs_seal, seal_inputs, with_sealed
from palisade.apikeys.model import KeyEvent
from palisade.common.crypto_client import SubjectErased
from palisade.common.errors import Unavailable

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
PERSON = KeyEvent("revoked", NOW, "user:usr_1", "127.0.0.77", "Firefox 120 on Linux")
ANONYMOUS = KeyEvent("leak_reported", NOW, "anonymous", "198.51.100.9", "curl 8")
SERVICE = KeyEvent("revoked", NOW, "service:auth")


class FailingCrypto:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def encrypt(self, items: object, *, subject: str = "") -> list[bytes]:
        self.calls += 1
        raise self.error


def test_only_a_persons_client_is_sealed() -> None:
    assert [needs_seal(e) for e in (PERSON, ANONYMOUS, SERVICE)] == [True, False, False]
    entries = [("ws_1", "key_1", e) for e in (ANONYMOUS, PERSON, SERVICE)]
    [(plaintext, aad, subject)] = seal_inputs(entries)  # type: ignore[misc]
    assert subject == "user:usr_1"
    assert b"127.0.0.77" in plaintext
    assert aad.startswith(b"pa1")
    written = with_sealed(entries, [b"envelope"])
    assert written[0] == ANONYMOUS
    assert written[2] == SERVICE
    assert (written[1].ip, written[1].device, written[1].client_ct) == (None, None, b"envelope")
    with pytest.raises(ValueError, match="more ciphertexts"):
        with_sealed(entries, [b"one", b"two"])


@pytest.mark.parametrize("error", [Unavailable("down"), SubjectErased()])
async def test_without_crypto_a_persons_entry_keeps_no_client(error: Exception) -> None:
    crypto = FailingCrypto(error)
    seal = HistorySeal(crypto=crypto)  # type: ignore[arg-type]
    [person, anonymous] = await seal.seal([("ws_1", "key_1", PERSON), ("ws_1", "key_1", ANONYMOUS)])
    assert crypto.calls == 1
    assert (person.ip, person.device, person.client_ct) == (None, None, None)
    assert (person.type, person.actor) == ("revoked", "user:usr_1")
    assert anonymous == ANONYMOUS


async def test_entries_of_no_person_need_no_crypto_call() -> None:
    crypto = FailingCrypto(Unavailable("down"))
    seal = HistorySeal(crypto=crypto)  # type: ignore[arg-type]
    assert await seal.seal([("ws_1", "key_1", SERVICE), ("ws_1", "key_1", ANONYMOUS)]) == [
        SERVICE,
        ANONYMOUS,
    ]
    assert crypto.calls == 0
    assert await HistorySeal(crypto=None).seal([("ws_1", "key_1", PERSON)]) == [
        KeyEvent("revoked", NOW, "user:usr_1")
    ]
