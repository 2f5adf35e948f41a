"""Errors as RFC 9457 problem+json with a stable `code`; gRPC statuses mapped to HTTP."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import grpc
from aiohttp import web

PROBLEM_TYPE = "application/problem+json"
# 403: the route's action (AccessRule.restricted_action) is barred until the person verifies
# their email address (see palisade.gateway.access.check_person).
EMAIL_NOT_VERIFIED = "email_not_verified"

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    grpc.StatusCode.CANCELLED: 503,
}
_DEFAULT_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    417: "expectation_failed",
    429: "rate_limited",
    500: "internal",
    501: "not_implemented",
    503: "unavailable",
}


def problem(
    status: int,
    *,
    code: str | None = None,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    phrase = HTTPStatus(status).phrase
    stable = code or _DEFAULT_CODES.get(status, "error")
    body = {
        "type": f"urn:palisade:problem:{stable}",
        "title": phrase,
        "status": status,
        "code": stable,
        "detail": detail or phrase,
    }
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=PROBLEM_TYPE,
        headers=headers,
    )


def trailers_of(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """A backend error's trailing metadata as text (the stable code, retry-after, ...)."""
    pairs: Any = error.trailing_metadata() or ()
    return {str(k): v for k, v in pairs if isinstance(v, str)}


def from_rpc_error(error: grpc.aio.AioRpcError) -> web.Response:
    """The problem for a backend's status. 5xx answers never pass the backend's text on."""
    status = HTTP_STATUS.get(error.code(), 500)
    trailers = trailers_of(error)
    code = trailers.get("palisade-error-code")
    headers = {}
    if status == 429 and trailers.get("retry-after", "").isdigit():
        headers["Retry-After"] = str(trailers["retry-after"])
    if status >= 500 or code == "caller_assertion_invalid":
        # A backend refused the gateway itself (keys, clocks): not the client's doing.
        if status < 500:
            status = 500
        return problem(status, code=_DEFAULT_CODES.get(status), headers=headers)
    return problem(
        status,
        code=code if isinstance(code, str) else None,
        detail=error.details() or None,
        headers=headers,
    )
