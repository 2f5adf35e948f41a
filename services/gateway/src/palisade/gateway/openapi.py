"""The OpenAPI 3.1 document, generated from the same descriptors as the routes.

Schemas follow the proto JSON mapping the gateway speaks: lowerCamelCase properties, enums as
strings, Timestamps as date-time strings, int64 as strings, google.protobuf.Struct as a free
JSON object. Unknown properties are refused, so request schemas say additionalProperties: false
(except inside a Struct, whose keys are the client's).

Routes the gateway answers itself (not from a proto) bring their own operation as a
LocalOperation; the error responses are the same Problem documents for both kinds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from palisade.common.event_catalogue import PublishedEventType
from palisade.gateway import openapi_webhooks
from palisade.gateway.problems import PROBLEM_TYPE
from palisade.gateway.routes import Route
from palisade.gateway.transcode import is_query_field
from palisade_api.common.v1 import access_pb2

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
# JSON's free-form values (proto JSON mapping of the well-known types google/protobuf/struct).
_FREE_FORM: dict[str, dict[str, Any]] = {
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Value": {},  # any JSON value, null included
}
ERROR_STATUSES = {
    "400": "Invalid request",
    "401": "Not signed in or token invalid",
    "403": "Signed in, but not allowed: insufficient role or scope, people only, a recent "
    "authentication is required, or the account's email address is not verified yet",
    "404": "Not found",
    "409": "Conflict with the current state (e.g. already exists)",
    "413": "Body too large",
    "415": "Not JSON",
    "429": "Rate limited (see Retry-After)",
    "503": "A dependency is unavailable",
}
PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string", "description": "stable machine-readable error code"},
        "detail": {"type": "string"},
    },
}


def error_responses(statuses: Sequence[str] = tuple(ERROR_STATUSES)) -> dict[str, Any]:
    """Problem responses for the given statuses (default: every one the gateway can send)."""
    return {
        status: {
            "description": ERROR_STATUSES[status],
            "content": {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


@dataclass(frozen=True)
class LocalOperation:
    """A route the gateway answers itself, described by hand (its schemas by name)."""

    method: str  # lower case, e.g. "get"
    path: str
    operation: dict[str, Any]
    schemas: dict[str, Any] = dataclass_field(default_factory=dict)


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}

    def ref(self, message: Descriptor, *, request: bool) -> dict[str, Any]:
        name = message.name + ("Input" if request else "")
        if name not in self.components:
            self.components[name] = {}  # placeholder first: messages may refer to themselves
            self.components[name] = self._object(message, request)
        return {"$ref": f"#/components/schemas/{name}"}

    def _object(self, message: Descriptor, request: bool) -> dict[str, Any]:
        properties = {f.json_name: self._field(f, request) for f in message.fields}
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if request:
            schema["additionalProperties"] = False
        return schema

    def _field(self, field: FieldDescriptor, request: bool) -> dict[str, Any]:
        message, enum = field.message_type, field.enum_type
        if message is not None and message.GetOptions().map_entry:
            value = self._field(message.fields_by_name["value"], request)
            return {"type": "object", "additionalProperties": value}  # keys: always strings
        if message is not None:
            item = self._message_field(message, request)
        elif enum is not None:
            item = {"type": "string", "enum": [v.name for v in enum.values]}
        else:
            item = dict(_SCALARS[field.type])
        if field.is_repeated:
            return {"type": "array", "items": item}
        return item

    def _message_field(self, message: Descriptor, request: bool) -> dict[str, Any]:
        if message.full_name == "google.protobuf.Timestamp":
            return {"type": "string", "format": "date-time"}
        free_form = _FREE_FORM.get(message.full_name)
        if free_form is None:
            return self.ref(message, request=request)
        item = dict(free_form)
        if request and item.get("type") == "object":
            # The enclosing request object refuses unknown properties; this one is the
            # client's own document (e.g. a WebAuthn credential): any keys go.
            item["additionalProperties"] = True
        return item


def _operation(route: Route, schemas: _Schemas) -> dict[str, Any]:
    method = route.method
    success = str(route.access.success_status or 200)
    operation: dict[str, Any] = {
        "operationId": method.name,
        "summary": method.name,
        "responses": error_responses(),
    }
    if success == "204":
        operation["responses"]["204"] = {"description": "Done"}
        if method.output_type.fields:  # a non-empty answer is a 200 (transcode.render)
            operation["responses"]["200"] = {
                "description": "Not done yet: the next step",
                "content": {
                    "application/json": {"schema": schemas.ref(method.output_type, request=False)}
                },
            }
    else:  # 200, 201 and 202 always carry a JSON object, `{}` for an empty message
        operation["responses"][success] = {
            "description": "Success",
            "content": {
                "application/json": {"schema": schemas.ref(method.output_type, request=False)}
            },
        }
    description = _who_may_call(route.access)
    if description:
        operation["description"] = description
    if route.access.access == access_pb2.ACCESS_USER:
        operation["security"] = [{"bearer": []}]
    elif route.access.bearer_optional:
        operation["security"] = [{}, {"bearer": []}]  # anonymous, or a signed-in person
    else:
        operation["security"] = []
    parameters = [
        {"name": v, "in": "path", "required": True, "schema": {"type": "string"}}
        for v in route.variables
    ]
    if not route.body:  # body-less routes take scalar fields from the query (never secrets)
        parameters += [
            {
                "name": f.json_name,
                "in": "query",
                "required": False,
                "schema": _query_schema(f),
            }
            for f in method.input_type.fields
            if f.name not in route.variables and is_query_field(f)
        ]
    if parameters:
        operation["parameters"] = parameters
    if route.body == "*":
        operation["requestBody"] = {
            "required": False,
            "content": {
                "application/json": {"schema": schemas.ref(method.input_type, request=True)}
            },
        }
    return operation


def _who_may_call(rule: access_pb2.AccessRule) -> str:
    """The access rule in words, for the parts a bearer scheme cannot say."""
    if not rule.api_keys:
        return ""
    text = "People (bearer access token) and API keys"
    if rule.scope:
        text += f" holding `{rule.scope}`"
    if rule.publishable_keys:
        return text + "; publishable keys from their allowedOrigins only (CORS answered)."
    return text + "; secret keys only (a publishable key is 403 secret_key_required)."


def _query_schema(field: FieldDescriptor) -> dict[str, Any]:
    if field.message_type is not None:  # transcode.QUERY_MESSAGES: a Timestamp
        return {"type": "string", "format": "date-time"}
    return dict(_SCALARS[field.type])


def openapi_document(
    routes: list[Route],
    local: Sequence[LocalOperation] = (),
    webhook_types: Mapping[str, PublishedEventType] | None = None,
) -> dict[str, Any]:
    """The document for the proto routes plus the gateway's own (local) operations, and, given
    webhook_types, the 3.1 `webhooks` section: what an endpoint receives for each type."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        template = route.template.replace("=*}", "}")
        paths.setdefault(template, {})[route.http_method.lower()] = _operation(route, schemas)
    for extra in local:
        operations = paths.setdefault(extra.path, {})
        if extra.method in operations:
            raise ValueError(f"{extra.method.upper()} {extra.path} is already a proto route")
        operations[extra.method] = extra.operation
        for name, schema in extra.schemas.items():
            if name in schemas.components:
                raise ValueError(f"schema {name} is already defined")
            schemas.components[name] = schema
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Palisade API", "version": "1"},
        "paths": paths,
    }
    if webhook_types:
        document["webhooks"] = openapi_webhooks.webhooks_section(webhook_types)
        for name, schema in openapi_webhooks.SCHEMAS.items():
            if name in schemas.components:
                raise ValueError(f"schema {name} is already defined")
            schemas.components[name] = schema
    document["components"] = {
        "schemas": schemas.components,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    }
    return document
