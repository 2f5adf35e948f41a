"""A short human description of a client from its User-Agent, e.g. "Chrome 120 on Mac OS X"."""

from __future__ import annotations

from palisade.auth.bounded import DEVICE_CHARS
from palisade.common import client_text


def describe_device(user_agent: str | None) -> str:
    """palisade.common.client_text.describe_device, fitting sessions.device."""
    return client_text.describe_device(user_agent, DEVICE_CHARS)
