"""describe_device in auth: palisade.common.client_text's description, fitting sessions.device.

The parsing, bounding and cleaning rules are tested in libs/common (test_client_text.py).
"""

from __future__ import annotations

import pytest

from palisade.auth.bounded import DEVICE_CHARS, IP_CHARS, client_ip
from palisade.auth.sessions.devices import describe_device

FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


def test_known_client() -> None:
    assert describe_device(FIREFOX_LINUX) == "Firefox 120 on Linux"


@pytest.mark.parametrize(
    ("user_agent", "expected"), [(None, "Unknown device"), ("-", "Unknown client")]
)
def test_missing_or_unreadable_user_agent(user_agent, expected) -> None:
    assert describe_device(user_agent) == expected


def test_descriptions_fit_the_device_column() -> None:
    description = describe_device(
        "Mozilla/5.0 (" + "Q" * 500 + "; rv:120.0) Gecko/20100101 Firefox/120.0"
    )
    assert 0 < len(description) <= DEVICE_CHARS == 128


def test_client_ips_fit_the_ip_column() -> None:
    assert client_ip("2001:DB8::1") == "2001:db8::1"
    assert client_ip("fe80::1%" + "z" * IP_CHARS) == "fe80::1"
    assert client_ip("not an ip") is None
