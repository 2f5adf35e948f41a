"""The OpenAPI document and the JSON it describes: free-form objects, error statuses, 202/204,
and what transcoding does with the same messages."""

from __future__ import annotations

import json

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass

from palisade.gateway.openapi import ERROR_STATUSES, LocalOperation, openapi_document
from palisade.gateway.routes import build_routes, match
from palisade.gateway.transcode import MAX_JSON_DEPTH, BadRequest, build_request, render
from palisade.gateway.whoami import OPERATION as WHOAMI
from palisade_api.auth.v1 import auth_pb2

AUTH = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]
ROUTES = build_routes([(AUTH, "auth")])
JSON = "application/json"
# What a browser's PublicKeyCredential.toJSON() gives for an assertion (shortened).
CREDENTIAL = {
    "id": "AAEC",
    "rawId": "AAEC",
    "type": "public-key",
    "response": {
        "clientDataJSON": "eyJ0eXBlIjoid2ViYXV0aG4uZ2V0In0",
        "authenticatorData": "SZYN5YgO",
        "signature": "MEUCIQ",
        "userHandle": None,
    },
    "clientExtensionResults": {},
    "authenticatorAttachment": "platform",
    "transports": ["internal", "hybrid"],
}


def _document() -> dict:
    from openapi_spec_validator import validate

    document = openapi_document(ROUTES, [WHOAMI])
    validate(document)
    return document


def _route(method: str, path: str):
    return match(ROUTES, method, path)


def test_struct_fields_are_free_json_objects_not_struct_messages() -> None:
    schemas = _document()["components"]["schemas"]
    assert not {"Struct", "StructInput", "Value", "ValueInput", "ListValue"} & set(schemas)
    login = schemas["PasskeyLoginRequestInput"]
    assert login["additionalProperties"] is False  # unknown top-level fields: still refused
    assert login["properties"]["credential"] == {"type": "object", "additionalProperties": True}
    register = schemas["RegisterPasskeyRequestInput"]
    assert register["properties"]["credential"] == {"type": "object", "additionalProperties": True}
    assert schemas["PasskeyOptions"]["properties"]["publicKey"] == {"type": "object"}


def test_a_json_object_for_a_struct_field_reaches_the_backend_intact() -> None:
    route, params = _route("POST", "/v1/auth/passkeys/login")
    body = json.dumps({"challengeId": "ch_1", "credential": CREDENTIAL}).encode()
    message = build_request(route, params, [], body, JSON)
    # What the backend receives: the wire bytes, decoded by its own stub.
    received = auth_pb2.PasskeyLoginRequest.FromString(message.SerializeToString())
    assert received.challenge_id == "ch_1"
    assert json_format.MessageToDict(received.credential) == CREDENTIAL


@pytest.mark.parametrize("credential", ["a string", ["a", "list"], 7, True])
def test_a_struct_field_takes_only_an_object(credential) -> None:
    route, params = _route("POST", "/v1/auth/passkeys/login")
    body = json.dumps({"challengeId": "ch_1", "credential": credential}).encode()
    with pytest.raises(BadRequest) as refused:
        build_request(route, params, [], body, JSON)
    assert (refused.value.status, refused.value.code) == (400, "invalid_request")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/auth/passkeys/login/options", {"email": None}),  # fuzzing found this one
        ("/v1/auth/login", {"email": "a@b.co", "password": None}),
        ("/v1/auth/passkeys/login", {"challengeId": "c", "credential": None}),
        ("/v1/auth/login", {"email": "a@b.co", "password": "x", "remember_me": None}),
    ],
)
def test_null_is_refused_where_the_document_says_a_value_goes(path, body) -> None:
    route, params = _route("POST", path)
    with pytest.raises(BadRequest, match="may not be null") as refused:
        build_request(route, params, [], json.dumps(body).encode(), JSON)
    assert refused.value.status == 400


def test_null_inside_free_form_json_is_data() -> None:
    route, params = _route("POST", "/v1/auth/passkeys/login")
    credential = {"response": {"userHandle": None}, "list": [None, 1], "x": None}
    body = json.dumps({"challengeId": "c", "credential": credential}).encode()
    message = build_request(route, params, [], body, JSON)
    assert json_format.MessageToDict(message)["credential"] == credential


def _nested(levels: int) -> dict:
    """A body `levels` JSON objects deep, the inner ones inside a Struct field."""
    inner: dict = {}
    for _ in range(levels - 2):
        inner = {"a": inner}
    return {"challengeId": "c", "credential": inner}


def test_the_deepest_accepted_body_still_decodes_at_the_backend() -> None:
    route, params = _route("POST", "/v1/auth/passkeys/login")
    deepest = json.dumps(_nested(MAX_JSON_DEPTH)).encode()
    message = build_request(route, params, [], deepest, JSON)
    auth_pb2.PasskeyLoginRequest.FromString(message.SerializeToString())  # no DecodeError
    with pytest.raises(BadRequest, match="nested too deeply"):
        build_request(route, params, [], json.dumps(_nested(MAX_JSON_DEPTH + 1)).encode(), JSON)
    # The limit is what keeps this from becoming a backend failure (a 5xx):
    unchecked = auth_pb2.PasskeyLoginRequest()
    json_format.ParseDict(_nested(MAX_JSON_DEPTH + 10), unchecked)
    with pytest.raises(Exception, match=r"MaxDepth"):
        auth_pb2.PasskeyLoginRequest.FromString(unchecked.SerializeToString())


def test_struct_numbers_render_as_json_integers_where_they_are_integers() -> None:
    route, _ = _route("POST", "/v1/auth/passkeys/login/options")
    options = auth_pb2.PasskeyOptions(challenge_id="ch_1")
    public_key = {
        "timeout": 60000,
        "pubKeyCredParams": [{"alg": -7, "type": "public-key"}],
        "ratio": 0.5,
        "huge": 1e300,
        "empty": None,
    }
    json_format.ParseDict({"publicKey": public_key}, options)
    status, body = render(route, options)
    assert status == 200
    assert body is not None
    assert b'"timeout":60000,' in body or b'"timeout":60000}' in body
    assert b'"alg":-7,' in body or b'"alg":-7}' in body
    assert json.loads(body) == {"challengeId": "ch_1", "publicKey": public_key}
    assert isinstance(json.loads(body)["publicKey"]["huge"], float)  # beyond 2^53: as it was


def test_every_operation_documents_403_and_409() -> None:
    document = _document()
    assert {"403", "409"} <= set(ERROR_STATUSES)
    for path, operations in document["paths"].items():
        if path == "/v1/whoami":
            continue  # a local route lists what it can answer (no 409 there)
        for name, operation in operations.items():
            for status in ("403", "409"):
                response = operation["responses"][status]
                problem = response["content"]["application/problem+json"]["schema"]
                assert problem == {"$ref": "#/components/schemas/Problem"}, (path, name)


def test_202_sends_a_json_object_and_the_document_says_so() -> None:
    route, _ = _route("POST", "/v1/auth/magic-links")
    assert route.access.success_status == 202
    status, body = render(route, auth_pb2.RequestMagicLinkResponse())
    assert (status, body) == (202, b"{}")
    operation = _document()["paths"]["/v1/auth/magic-links"]["post"]
    assert "200" not in operation["responses"]
    ref = operation["responses"]["202"]["content"][JSON]["schema"]["$ref"]
    schema = _document()["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema == {"type": "object", "properties": {}}
    # And 204 is the one success without a body, documented without content.
    route, _ = _route("POST", "/v1/auth/logout")
    assert render(route, auth_pb2.LogoutResponse()) == (204, None)
    assert _document()["paths"]["/v1/auth/logout"]["post"]["responses"]["204"] == {
        "description": "Done"
    }


def test_201_comes_from_the_access_rule() -> None:
    route, _ = _route("POST", "/v1/auth/signup")
    status, body = render(route, auth_pb2.SignUpResponse(user_id="usr_1", workspace_id="ws_1"))
    assert (status, json.loads(body or b"")) == (201, {"userId": "usr_1", "workspaceId": "ws_1"})
    assert "201" in _document()["paths"]["/v1/auth/signup"]["post"]["responses"]


def test_local_operations_cannot_shadow_proto_routes() -> None:
    clash = LocalOperation(method="get", path="/v1/me", operation={"responses": {}})
    with pytest.raises(ValueError, match="already a proto route"):
        openapi_document(ROUTES, [clash])


def test_two_methods_on_one_path_are_refused() -> None:
    with pytest.raises(ValueError, match="both"):
        build_routes([(AUTH, "auth"), (AUTH, "copy")])


def _map_service():
    """A proto built here: a map field and an annotated method (like a future service's)."""
    from google.api import annotations_pb2

    from palisade_api.common.v1 import access_pb2

    pool = descriptor_pool.Default()
    name = "gateway_tests/labels.proto"
    try:
        return pool.FindFileByName(name).services_by_name["Labels"]
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto(
        name=name,
        package="gateway_tests.v1",
        syntax="proto3",
        dependency=["google/api/annotations.proto", access_pb2.DESCRIPTOR.name],
    )
    message = proto.message_type.add(name="LabelSet")
    entry = message.nested_type.add(name="TagsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=9, label=1)
    entry.field.add(name="value", number=2, type=5, label=1)
    message.field.add(
        name="tags", number=1, type=11, label=3, type_name=".gateway_tests.v1.LabelSet.TagsEntry"
    )
    method = proto.service.add(name="Labels").method.add(
        name="Put",
        input_type=".gateway_tests.v1.LabelSet",
        output_type=".gateway_tests.v1.LabelSet",
    )
    method.options.Extensions[annotations_pb2.http].post = "/v1/labels"
    method.options.Extensions[annotations_pb2.http].body = "*"
    method.options.Extensions[access_pb2.access].access = access_pb2.ACCESS_PUBLIC
    pool.Add(proto)
    return pool.FindFileByName(name).services_by_name["Labels"]


def test_map_fields_are_json_objects() -> None:
    routes = build_routes([(_map_service(), "labels")])
    schemas = openapi_document(routes)["components"]["schemas"]
    tags = {"type": "object", "additionalProperties": {"type": "integer", "format": "int32"}}
    assert schemas["LabelSetInput"]["properties"]["tags"] == tags
    route, params = match(routes, "POST", "/v1/labels")
    message = build_request(route, params, [], b'{"tags": {"a": 1, "b": 2}}', JSON)
    assert dict(message.tags) == {"a": 1, "b": 2}  # type: ignore[attr-defined]
    assert GetMessageClass(route.method.output_type) is type(message)


def test_the_webhooks_section_documents_every_published_event_type() -> None:
    from palisade.common.event_catalogue import PUBLISHED_EVENT_TYPES, WEBHOOKS_EXCLUDED

    document = openapi_document(ROUTES, [WHOAMI], PUBLISHED_EVENT_TYPES)
    webhooks = document["webhooks"]
    assert sorted(webhooks) == sorted(PUBLISHED_EVENT_TYPES)
    assert "chat.message.created" in webhooks
    assert "session.login_succeeded" in webhooks
    assert not set(webhooks) & WEBHOOKS_EXCLUDED
    delivery = webhooks["chat.message.created"]["post"]
    headers = {p["name"] for p in delivery["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    body = delivery["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["type", "timestamp", "data"]
    assert body["properties"]["type"] == {"const": "chat.message.created"}
    schemas = document["components"]["schemas"]
    data = body["properties"]["data"]["$ref"].rsplit("/", 1)[1]
    assert "ip" not in schemas[data]["properties"]  # no client PII leaves through webhooks
    assert "userAgent" not in schemas[data]["properties"]
    test_body = webhooks["webhook.test"]["post"]["requestBody"]["content"]["application/json"]
    test_data = test_body["schema"]["properties"]["data"]["$ref"].rsplit("/", 1)[1]
    assert schemas[test_data]["required"] == ["webhookId", "workspaceId", "message"]


def test_no_webhooks_section_without_webhook_types() -> None:
    assert "webhooks" not in openapi_document(ROUTES, [WHOAMI])
