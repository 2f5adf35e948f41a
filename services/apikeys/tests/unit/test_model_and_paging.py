"""Key states, validity, page tokens, revocation payloads, client text (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from palisade.apikeys.client_text import client_ip, describe_device, leak_source
from palisade.apikeys.errors import InvalidPageToken
from palisade.apikeys.model import key_state, valid_until
from palisade.apikeys.paging import (
    decode_event_position,
    decode_key_position,
    encode,
    page_size,
)
from palisade.apikeys.revocations import KeyRevocationNotice, notice

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_states() -> None:
    assert key_state(NOW, None, None, None) == "active"
    assert key_state(NOW, None, NOW + HOUR, None) == "active"
    assert key_state(NOW, None, NOW, None) == "expired"
    assert key_state(NOW, None, None, NOW + HOUR) == "expiring"
    assert key_state(NOW, None, None, NOW) == "expired"
    assert key_state(NOW, NOW - HOUR, NOW + HOUR, None) == "revoked"
    assert valid_until(None, None) is None
    assert valid_until(NOW + HOUR, NOW) == NOW
    assert valid_until(NOW, NOW + HOUR) == NOW


def test_page_tokens_round_trip_and_refuse_garbage() -> None:
    assert decode_key_position("") is None
    key_id = "key_" + "0a" * 16
    assert decode_key_position(encode(NOW, key_id)) == (NOW, key_id)
    assert decode_event_position(encode(NOW, 7)) == (NOW, 7)
    for bad in [
        "!",
        "e30",
        encode(NOW, 7),
        "a" * 500,
        encode(NOW, "x" * 41),
        encode(NOW, "key_1"),
        encode(NOW, key_id + "\x00"),
    ]:
        with pytest.raises(InvalidPageToken):
            decode_key_position(bad)
    for bad in [encode(NOW, key_id), encode(NOW, -1), encode(NOW, True), encode(NOW, 2**63)]:
        with pytest.raises(InvalidPageToken):
            decode_event_position(bad)
    assert page_size(0) == 50
    assert page_size(-3) == 50
    assert page_size(10_000) == 100


def test_revocation_payload_round_trip() -> None:
    payload = notice([b"\x01" * 32], ["key_1"], "revoked", NOW)
    parsed = KeyRevocationNotice.from_payload(payload)
    assert parsed.key_hashes == (b"\x01" * 32,)
    assert parsed.key_ids == ("key_1",)
    assert parsed.revoked_at == NOW
    for bad in [{}, {**payload, "key_hashes": ["zz"]}, {**payload, "key_hashes": ["00"]}]:
        with pytest.raises((ValueError, KeyError, TypeError)):
            KeyRevocationNotice.from_payload(bad)


def test_client_text_is_bounded_and_printable() -> None:
    assert client_ip("2001:DB8::1") == "2001:db8::1"
    assert client_ip("not an ip") is None
    assert client_ip(None) is None
    assert leak_source("https://x\r\n\u202eevil") == "https://xevil"
    assert leak_source("\r\n") is None
    assert len(leak_source("s" * 500) or "") == 200
    assert describe_device(None) == "Unknown device"
    assert describe_device(
        "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
    ) == ("Firefox 120 on Linux")
    assert len(describe_device("Chrome/" + "9" * 5000)) <= 128
