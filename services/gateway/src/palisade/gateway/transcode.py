"""HTTP/JSON <-> proto messages, with the proto JSON mapping (lowerCamelCase out, both in)."""

from __future__ import annotations

import json
import math
from functools import cache
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from palisade.gateway.routes import Route

JSON_TYPES = ("application/json",)
# Deepest JSON accepted in a body. Each level of a free-form object (google.protobuf.Struct)
# is two message levels on the wire, and backends refuse messages nested past 100 levels
# (protobuf's default): a body the gateway accepts must also decode at the backend, or the
# backend's refusal would surface as a 5xx. 32 leaves room for the enclosing messages.
MAX_JSON_DEPTH = 32


class BadRequest(Exception):
    """A request the gateway refuses before any backend sees it (a 4xx, with a stable code)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


# Numbers JSON can write but no proto field (nor a backend's JSON parser) can hold: NaN and
# the infinities (not JSON at all, but Python's json reads them), literals that overflow a
# double (1e999), and integers past the widest proto integer (uint64 / int64). A Struct holds
# every number as a double, where such values would reach a backend as inf or fail to convert
# there (a 500): refused here with one stable code.
_INT_RANGE = (-(2**63), 2**64 - 1)
_INT_DIGITS = 20  # checked before converting, so a 10,000-digit literal costs nothing


class _BadNumber(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _BadNumber(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber("overflow")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _INT_DIGITS:
        raise _BadNumber("overflow")
    value = int(text)
    if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        raise _BadNumber("overflow")
    return value


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
        data = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except _BadNumber:
        raise BadRequest(
            400, "invalid_number", "numbers must be finite and within 64-bit range"
        ) from None
    except (ValueError, RecursionError):
        raise BadRequest(400, "invalid_request", "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "invalid_request", "body must be a JSON object")
    if _too_deep(data, MAX_JSON_DEPTH):
        raise BadRequest(400, "invalid_request", "body is nested too deeply")
    return data


def _too_deep(value: Any, allowed: int) -> bool:
    """Whether value nests objects/arrays more than `allowed` levels (value itself is one)."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    if allowed <= 0:
        return True
    return any(_too_deep(child, allowed - 1) for child in children)


# Secrets never travel in URLs (they end up in logs, proxies and browser history): a field
# whose name says it is one is never filled from the query string.
_SECRET_WORDS = ("token", "password", "secret", "code", "key", "credential")
# ...except list cursors, which hold no secret (an opaque position in a list the caller may
# read anyway) and have no other way in on a GET.
_NOT_SECRETS = frozenset({"page_token"})


# Well-known messages the JSON mapping writes as one string (a Timestamp is RFC 3339), so one
# query parameter can carry them (`?since=2026-01-01T00:00:00Z`).
QUERY_MESSAGES = frozenset({"google.protobuf.Timestamp"})


def is_query_field(field: FieldDescriptor) -> bool:
    """Whether a field may come from the query string: a single scalar (or Timestamp), not a
    secret."""
    return (
        (field.message_type is None or field.message_type.full_name in QUERY_MESSAGES)
        and not field.is_repeated
        and (field.name in _NOT_SECRETS or not any(word in field.name for word in _SECRET_WORDS))
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


# The proto JSON mapping reads `null` as "field not set", so `{"email": null}` would pass
# where the OpenAPI document (and a client reading it) says a string goes. The gateway refuses
# nulls instead, except where null is data: inside free-form JSON (Struct, Value, ListValue).
_FREE_FORM = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)


@cache
def _fields_by_key(message: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by every key the JSON mapping accepts (lowerCamelCase and proto name)."""
    return {**{f.name: f for f in message.fields}, **{f.json_name: f for f in message.fields}}


def _has_null_field(data: dict[str, Any], message: Descriptor) -> bool:
    fields = _fields_by_key(message)
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            continue  # unknown: the parser refuses it
        kind = field.message_type
        if value is None:
            if kind is None or kind.full_name != "google.protobuf.Value":
                return True
            continue
        if kind is None or kind.full_name in _FREE_FORM or kind.GetOptions().map_entry:
            continue  # scalars, free-form JSON; map values are checked by the parser
        items = value if isinstance(value, list) else [value]
        if any(isinstance(item, dict) and _has_null_field(item, kind) for item in items):
            return True
    return False


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
    if _has_null_field(data, route.method.input_type):
        raise BadRequest(400, "invalid_request", "fields may not be null (leave them out)")
    message = GetMessageClass(route.method.input_type)()
    if not data:  # nothing to parse (most GETs): the parser's walk costs more than the route
        return message
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False)
    except (json_format.ParseError, TypeError, ValueError, RecursionError):
        # The parser's text can quote submitted values (passwords included): not echoed.
        raise BadRequest(400, "invalid_request", "body does not match the request schema") from None
    return message


def render(route: Route, response: Message) -> tuple[int, bytes | None]:
    """The success status and body: no body for 204, otherwise always a JSON object (`{}` for
    an empty message, e.g. a 202), so a client can parse every 200/201/202 the same way.

    A 204 route whose answer is not empty has a next step to name instead of being done (a
    password reset that needs the second factor: `{mfaRequired, methods}`): that is a 200."""
    status = route.access.success_status or 200
    if status == 204:
        if not response.ListFields():
            return status, None
        status = 200
    body = json_format.MessageToDict(response, preserving_proto_field_name=False)
    if _has_floats(response.DESCRIPTOR):
        body = _integral_floats_as_ints(body)
    return status, _COMPACT.encode(body).encode()


# Built once (json.dumps with separators would build an encoder per response).
_COMPACT = json.JSONEncoder(separators=(",", ":"))

# Python's json_format writes every number of a Struct (a double on the wire) with a ".0":
# a WebAuthn `"alg": -7` would leave as `-7.0`, which strictly typed clients refuse as an
# integer. Other protobuf runtimes print integral doubles without the fraction; so do we.
_SAFE_INTEGER = 2**53


@cache
def _has_floats(message: Descriptor) -> bool:
    """Whether a message can hold a double/float anywhere (only then is rendering walked)."""
    seen: set[str] = set()
    pending = [message]
    while pending:
        current = pending.pop()
        if current.full_name in seen:
            continue
        seen.add(current.full_name)
        for field in current.fields:
            if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
                return True
            if field.message_type is not None:
                pending.append(field.message_type)
    return False


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= _SAFE_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    return value
