"""The rules an endpoint's fields follow (event types, description, overlap); the URL's are the
egress package's (palisade.webhooks.egress.urls.check_webhook_url)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from palisade.webhooks.catalogue import MAX_EVENT_TYPES, is_published
from palisade.webhooks.egress.urls import WebhookUrl
from palisade.webhooks.errors import (
    InvalidDescription,
    InvalidEventTypes,
    InvalidOverlap,
    UnknownEventType,
)

MAX_DESCRIPTION_CHARS = 500
DEFAULT_OVERLAP_SECONDS = 86_400
MAX_OVERLAP_SECONDS = 7 * 86_400
_ALLOWED_CONTROLS = frozenset("\n\t")


def event_types(given: Sequence[str]) -> tuple[str, ...]:
    """1..100 distinct types of the catalogue, sorted (a repeat counts once)."""
    if not given or len(given) > MAX_EVENT_TYPES:
        raise InvalidEventTypes()
    for event_type in given:
        if not is_published(event_type):
            raise UnknownEventType()
    return tuple(sorted(set(given)))


def description(text: str) -> str:
    """At most 500 characters; no control characters but newline and tab, no lone
    surrogates (which no database stores as text)."""
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise InvalidDescription()
    for char in text:
        if char in _ALLOWED_CONTROLS:
            continue
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise InvalidDescription()
    return text


def overlap_seconds(given: int | None) -> int:
    if given is None:
        return DEFAULT_OVERLAP_SECONDS
    if not 0 <= given <= MAX_OVERLAP_SECONDS:
        raise InvalidOverlap()
    return given


def origin_of(url: WebhookUrl) -> str:
    """scheme://host[:port] (the port only when not the scheme's default): what of a URL may
    be shown to operators and put in events, since a path or query may hold a token."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    default = {"http": 80, "https": 443}[url.scheme]
    return f"{url.scheme}://{host}" + ("" if url.port == default else f":{url.port}")
