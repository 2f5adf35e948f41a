"""The security log's public RPCs behind the gateway: routes and roles from audit.proto, time
ranges in the query string, and the OpenAPI document describing them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from palisade.gateway.openapi import openapi_document
from palisade.gateway.routes import build_routes, match
from palisade.gateway.transcode import BadRequest, build_request
from palisade_api.audit.v1 import audit_pb2
from palisade_api.common.v1 import access_pb2

AUDIT = audit_pb2.DESCRIPTOR.services_by_name["AuditService"]
ROUTES = build_routes([(AUDIT, "audit")])


def test_the_four_public_rpcs_and_their_access() -> None:
    found = {(r.http_method, r.template): r for r in ROUTES}
    assert set(found) == {
        ("GET", "/v1/me/security-events"),
        ("GET", "/v1/audit/events"),
        ("GET", "/v1/audit/checkpoint"),
        ("GET", "/v1/audit/keys"),
    }
    assert list(found["GET", "/v1/audit/events"].access.roles) == ["owner", "admin"]
    assert list(found["GET", "/v1/audit/checkpoint"].access.roles) == ["owner", "admin"]
    assert not found["GET", "/v1/me/security-events"].access.roles
    assert found["GET", "/v1/audit/keys"].access.access == access_pb2.ACCESS_PUBLIC
    assert all(r.audience == "audit" for r in ROUTES)
    assert all(not r.access.api_keys for r in ROUTES)  # people only (and the public keys)


def test_time_ranges_and_filters_come_from_the_query() -> None:
    route, params = match(ROUTES, "GET", "/v1/audit/events")
    request = build_request(
        route,
        params,
        [
            ("since", "2026-01-01T00:00:00Z"),
            ("until", "2026-02-01T12:30:00+01:00"),
            ("type", "session.login_failed"),
            ("pageSize", "20"),
            ("pageToken", "p1.x.y"),
        ],
        b"",
        "",
    )
    assert request.since.ToDatetime(tzinfo=UTC) == datetime(2026, 1, 1, tzinfo=UTC)
    assert request.until.ToDatetime(tzinfo=UTC) == datetime(2026, 2, 1, 11, 30, tzinfo=UTC)
    assert (request.type, request.page_size, request.page_token) == (
        "session.login_failed",
        20,
        "p1.x.y",
    )


@pytest.mark.parametrize("since", ["yesterday", "2026-13-01T00:00:00Z", ""])
def test_a_malformed_moment_is_a_bad_request(since: str) -> None:
    route, params = match(ROUTES, "GET", "/v1/audit/events")
    with pytest.raises(BadRequest) as refused:
        build_request(route, params, [("since", since)], b"", "")
    assert refused.value.status == 400


def test_the_openapi_document_describes_them() -> None:
    document = openapi_document(ROUTES)
    events = document["paths"]["/v1/audit/events"]["get"]
    parameters = {p["name"]: p["schema"] for p in events["parameters"]}
    assert parameters["since"] == {"type": "string", "format": "date-time"}
    assert parameters["until"] == {"type": "string", "format": "date-time"}
    assert {"type", "actor", "subject", "pageSize", "pageToken"} <= set(parameters)
    assert document["paths"]["/v1/audit/keys"]["get"]["security"] == []
    assert "/v1/me/security-events" in document["paths"]
    assert "/v1/audit/checkpoint" in document["paths"]
