"""Unit rules of the service's core: settings from the environment, the origin kept of a URL,
event-type and description rules, the catalogue, delivery bodies."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from palisade.webhooks import validation
from palisade.webhooks.catalogue import EVENT_TYPES, TEST_EVENT_TYPE, UNPUBLISHED
from palisade.webhooks.config import DEFAULT_RETRY_SCHEDULE, WebhooksSettings
from palisade.webhooks.egress.urls import parse_webhook_url
from palisade.webhooks.errors import InvalidDescription, InvalidEventTypes, UnknownEventType
from palisade.webhooks.model import delivery_body, is_delivery_id, is_endpoint_id, new_endpoint_id


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = WebhooksSettings()
    assert settings.grpc_port == 50056
    assert settings.metrics_port == 9106
    assert settings.allowed_networks == ()
    assert settings.delivery_timeout_seconds == 15.0
    assert settings.retry_schedule == DEFAULT_RETRY_SCHEDULE
    monkeypatch.setenv("PALISADE_WEBHOOKS_ALLOWED_NETWORKS", '["127.0.0.0/8", "::1/128"]')
    monkeypatch.setenv("PALISADE_WEBHOOKS_RETRY_SCHEDULE", "[1, 2.5]")
    settings = WebhooksSettings()
    assert settings.allowed_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert settings.retry_schedule == (1.0, 2.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ALLOWED_NETWORKS", '["127.0.0.1/8"]'),  # host bits set
        ("ALLOWED_NETWORKS", "127.0.0.0/8"),  # not JSON
        ("RETRY_SCHEDULE", "[]"),
        ("RETRY_SCHEDULE", "[5, 0]"),
        ("STREAM_START", "later"),
    ],
)
def test_bad_settings_fail_at_start(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"PALISADE_WEBHOOKS_{name}", value)
    with pytest.raises((ValidationError, ValueError)):
        WebhooksSettings()


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Hooks.Example.com/a?token=x", "https://hooks.example.com"),
        ("https://hooks.example.com:443/a", "https://hooks.example.com"),
        ("https://hooks.example.com:8443/a", "https://hooks.example.com:8443"),
        ("http://127.0.0.1:8080/in", "http://127.0.0.1:8080"),
        ("https://[2001:db8::1]/x", "https://[2001:db8::1]"),
        ("https://[2001:db8::1]:9000/x", "https://[2001:db8::1]:9000"),
    ],
)
def test_the_origin_drops_path_and_query(url: str, origin: str) -> None:
    assert validation.origin_of(parse_webhook_url(url)) == origin


def test_event_types() -> None:
    assert validation.event_types(["visitor.created", "chat.created", "visitor.created"]) == (
        "chat.created",
        "visitor.created",
    )
    with pytest.raises(InvalidEventTypes):
        validation.event_types([])
    with pytest.raises(InvalidEventTypes):
        validation.event_types(["chat.created"] * 101)
    for bad in ("session.refreshed", "Chat.Created", "chat.created ", "x" * 1000):
        with pytest.raises(UnknownEventType):
            validation.event_types([bad])


def test_descriptions() -> None:
    assert validation.description("") == ""
    assert validation.description("line\n\tnext é 😀") == "line\n\tnext é 😀"
    assert validation.description("d" * 500) == "d" * 500
    for bad in ("d" * 501, "nul\x00", "esc\x1b[31m", "c1\x85"):
        with pytest.raises(InvalidDescription):
            validation.description(bad)


def test_the_catalogue() -> None:
    assert TEST_EVENT_TYPE in EVENT_TYPES
    assert "chat.message.created" in EVENT_TYPES
    assert "session.login_failed" in EVENT_TYPES
    assert not UNPUBLISHED & set(EVENT_TYPES)
    assert list(EVENT_TYPES) == sorted(EVENT_TYPES)


def test_ids_and_bodies() -> None:
    assert is_endpoint_id(new_endpoint_id())
    assert not is_endpoint_id("whk_" + "A" * 32)
    assert not is_delivery_id(new_endpoint_id())
    moment = datetime(2026, 12, 4, 1, 2, 3, 456789, tzinfo=UTC)
    body = delivery_body("webhook.test", moment, {"a": "é"})
    assert body == '{"type":"webhook.test","timestamp":"2026-12-04T01:02:03.456Z","data":{"a":"é"}}'
    assert json.loads(body)["data"] == {"a": "é"}
