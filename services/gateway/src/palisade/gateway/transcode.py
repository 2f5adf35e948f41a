"""HTTP/JSON <-> proto messages, with the proto JSON mapping (lowerCamelCase out, both in)."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from palisade.gateway.routes import Route

JSON_TYPES = ("application/json",)


class BadRequest(Exception):
    """A request the gateway refuses before any backend sees it (a 4xx, with a stable code)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")  # ambiguous: which value did the client mean?
    return dict(pairs)


def _json_body(raw: bytes, content_type: str) -> dict[str, Any]:
    if not raw:
        return {}
    if content_type not in JSON_TYPES:
        raise BadRequest(415, "unsupported_media_type", "send application/json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, "invalid_request", "body is not valid UTF-8") from None
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError):
        raise BadRequest(400, "invalid_request", "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "invalid_request", "body must be a JSON object")
    return data


# Secrets never travel in URLs (they end up in logs, proxies and browser history): a field
# whose name says it is one is never filled from the query string.
_SECRET_WORDS = ("token", "password", "secret", "code", "key", "credential")


def is_query_field(field: FieldDescriptor) -> bool:
    """Whether a field may come from the query string: a single scalar, not a secret."""
    return (
        field.message_type is None
        and not field.is_repeated
        and not any(word in field.name for word in _SECRET_WORDS)
    )


def _query_fields(route: Route, query: list[tuple[str, str]]) -> dict[str, Any]:
    """Scalar request fields from the query string (routes without a "*" body only)."""
    if not query:
        return {}
    if route.body == "*":
        raise BadRequest(400, "invalid_request", "this route takes its input in the body")
    fields = {f.json_name: f for f in route.method.input_type.fields}
    fields.update({f.name: f for f in route.method.input_type.fields})
    data: dict[str, Any] = {}
    for name, value in query:
        field = fields.get(name)
        if field is None or not is_query_field(field):
            raise BadRequest(400, "invalid_request", "unknown or unsafe query parameter")
        if field.name in data:
            raise BadRequest(400, "invalid_request", f"{name} is given twice")
        data[field.name] = value
    return data


def build_request(
    route: Route,
    path_params: dict[str, str],
    query: list[tuple[str, str]],
    raw: bytes,
    content_type: str,
) -> Message:
    """The request message for route, from the path, query and body; BadRequest if it won't fit."""
    data: dict[str, Any] = _query_fields(route, query)
    if route.body:
        body = _json_body(raw, content_type)
        data.update(body if route.body == "*" else {route.body: body})
    elif raw:
        raise BadRequest(400, "invalid_request", "this route takes no body")
    for field in route.method.input_type.fields:
        if field.json_name != field.name and field.json_name in data and field.name in data:
            raise BadRequest(400, "invalid_request", f"{field.json_name} is given twice")
    for name, value in path_params.items():
        if name in data:
            raise BadRequest(400, "invalid_request", f"{name} is given twice")
        data[name] = value
    message = GetMessageClass(route.method.input_type)()
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False)
    except (json_format.ParseError, TypeError, ValueError, RecursionError):
        # The parser's text can quote submitted values (passwords included): not echoed.
        raise BadRequest(400, "invalid_request", "body does not match the request schema") from None
    return message


def render(route: Route, response: Message) -> tuple[int, bytes | None]:
    status = route.access.success_status or 200
    if status == 204:
        return status, None
    body = json_format.MessageToDict(response, preserving_proto_field_name=False)
    return status, json.dumps(body, separators=(",", ":")).encode()
