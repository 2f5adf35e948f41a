"""Routing and configuration for the visitors upstream: literal paths before templates, the
publishable-key rule checked when routes are built, origins as browsers send them."""

from __future__ import annotations

import dataclasses
import functools

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from pydantic import ValidationError

from palisade.common.origins import is_browser_origin
from palisade.gateway.config import GatewaySettings
from palisade.gateway.cors import BrowserRoutes
from palisade.gateway.routes import (
    MethodNotAllowed,
    Route,
    RouteNotFound,
    Router,
    _compile,
    build_routes,
    match,
    matching_order,
)
from palisade_api.common.v1 import access_pb2
from palisade_api.visitors.v1 import visitors_pb2

_SERVICES = [
    (visitors_pb2.DESCRIPTOR.services_by_name[name], "visitors")
    for name in ("VisitorsService", "ChatsService")
]


def test_every_visitors_and_chats_rpc_is_a_route_with_its_rule() -> None:
    routes = {(r.http_method, r.template): r for r in build_routes(_SERVICES)}
    assert set(routes) == {
        ("POST", "/v1/visitors"),
        ("GET", "/v1/visitors/{id}"),
        ("GET", "/v1/visitors"),
        ("DELETE", "/v1/visitors/{id}"),
        ("POST", "/v1/chats"),
        ("POST", "/v1/chats/{chat_id}/messages"),
        ("GET", "/v1/chats/{chat_id}/messages"),
        ("GET", "/v1/chats/search"),
        ("GET", "/v1/chats/{id}"),
        ("GET", "/v1/visitors/{visitor_id}/chats"),
    }
    publishable = {shape for shape, route in routes.items() if route.access.publishable_keys}
    assert publishable == {
        ("POST", "/v1/visitors"),
        ("POST", "/v1/chats"),
        ("POST", "/v1/chats/{chat_id}/messages"),
    }
    assert routes[("DELETE", "/v1/visitors/{id}")].access.success_status == 204
    table = list(routes.values())
    assert BrowserRoutes(table, Router(table)).templates == {
        "/v1/visitors",
        "/v1/chats",
        "/v1/chats/{chat_id}/messages",
    }


def test_a_literal_path_wins_over_a_template_of_its_shape_in_any_order() -> None:
    routes = build_routes(_SERVICES)
    search = next(r for r in routes if r.method.name == "SearchMessages")
    listing = next(r for r in routes if r.method.name == "ListMessages")
    # A made-up GET /v1/chats/{chat_id} listed before the literal /v1/chats/search.
    pattern, variables = _compile("/v1/chats/{chat_id}", listing.method)
    by_id = dataclasses.replace(
        listing, template="/v1/chats/{chat_id}", pattern=pattern, variables=variables
    )
    for order in ([by_id, search], [search, by_id]):
        by_patterns = functools.partial(match, matching_order(order))
        for find in (Router(order).match, by_patterns):
            route, params = find("GET", "/v1/chats/search")
            assert (route.method.name, params) == ("SearchMessages", {})
            route, params = find("GET", "/v1/chats/cht_1")
            assert (route.template, params) == ("/v1/chats/{chat_id}", {"chat_id": "cht_1"})


def test_a_chat_by_id_beside_search_and_its_messages() -> None:
    """The real table: /v1/chats/{id} never takes /v1/chats/search, nor a chat's messages."""
    routes = build_routes(_SERVICES)
    by_patterns = functools.partial(match, matching_order(routes))
    chat, visitor = "cht_" + "0" * 32, "vis_" + "0" * 32
    for find in (Router(routes).match, by_patterns):
        for method, path, expected in (
            ("GET", "/v1/chats/search", ("SearchMessages", {})),
            ("GET", f"/v1/chats/{chat}", ("GetChat", {"id": chat})),
            ("GET", "/v1/chats/messages", ("GetChat", {"id": "messages"})),
            ("GET", f"/v1/chats/{chat}/messages", ("ListMessages", {"chat_id": chat})),
            ("POST", f"/v1/chats/{chat}/messages", ("PostMessage", {"chat_id": chat})),
            ("GET", f"/v1/visitors/{visitor}", ("GetVisitor", {"id": visitor})),
            ("GET", f"/v1/visitors/{visitor}/chats", ("ListVisitorChats", {"visitor_id": visitor})),
        ):
            route, params = find(method, path)
            assert (route.method.name, params) == expected, path
        with pytest.raises(MethodNotAllowed) as caught:
            find("DELETE", f"/v1/chats/{chat}")
        assert caught.value.allowed == ["GET"]
        with pytest.raises(RouteNotFound):
            find("GET", f"/v1/chats/{chat}/x")


def _every_route() -> list[Route]:
    from palisade.gateway.routes import service_descriptor
    from palisade.gateway.server import _AUTH_SERVICES
    from palisade_api.apikeys.v1 import apikeys_pb2
    from palisade_api.audit.v1 import audit_pb2
    from palisade_api.auth.v1 import auth_pb2

    return build_routes(
        [
            (auth_pb2.DESCRIPTOR.services_by_name["AuthService"], "auth"),
            *((service_descriptor(module, name), "auth") for module, name in _AUTH_SERVICES),
            (apikeys_pb2.DESCRIPTOR.services_by_name["ApiKeysService"], "apikeys"),
            (audit_pb2.DESCRIPTOR.services_by_name["AuditService"], "audit"),
            *_SERVICES,
        ]
    )


def _outcome(find: object, method: str, path: str) -> object:
    try:
        route, params = find(method, path)  # type: ignore[operator]
    except MethodNotAllowed as exc:
        return ("405", exc.allowed)
    except RouteNotFound:
        return "404"
    return (route.full_method, params)


def test_the_route_tree_answers_as_the_patterns_do() -> None:
    """The Router (the dispatcher's) against match() over every pattern, on every route's path
    with its variables filled by other routes' literal segments, and on mutations of it."""
    routes = _every_route()
    ordered, router = matching_order(routes), Router(routes)
    words = sorted({s for r in routes for s in r.template.split("/") if "{" not in s} - {""})
    paths = {"/", "", "//", "/v1", "/v1/", "v1/me", "/v1/me/", "/v1//me", "/v1/me/x", "/v1/me\n"}
    for route in routes:
        for word in (*words, "x", "vis_1"):
            path = "/".join(word if "{" in s else s for s in route.template.split("/"))
            paths.update({path, path + "/", path + "/x", path.rsplit("/", 1)[0], "/x" + path})
            paths.add(path + "\n")
    assert len(paths) > 1000
    assert _outcome(router.match, "GET", "/v1/me\n") == "404"
    methods = ("GET", "POST", "PATCH", "DELETE", "PUT", "OPTIONS", "get")
    for path in sorted(paths):
        for method in methods:
            expected = _outcome(lambda m, p: match(ordered, m, p), method, path)
            assert _outcome(router.match, method, path) == expected, (method, path)


def _service_with_rule(name: str, rule: access_pb2.AccessRule) -> object:
    pool = descriptor_pool.Default()
    file_name = f"gateway_tests/{name}.proto"
    proto = descriptor_pb2.FileDescriptorProto(
        name=file_name,
        package=f"gateway_tests.{name}",
        syntax="proto3",
        dependency=["google/api/annotations.proto", access_pb2.DESCRIPTOR.name],
    )
    proto.message_type.add(name="Empty")
    empty = f".gateway_tests.{name}.Empty"
    method = proto.service.add(name="Widgets").method.add(
        name="Make", input_type=empty, output_type=empty
    )
    method.options.Extensions[annotations_pb2.http].post = f"/v1/{name}"
    method.options.Extensions[access_pb2.access].CopyFrom(rule)
    pool.Add(proto)
    return pool.FindFileByName(file_name).services_by_name["Widgets"]


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        (
            "pk_without_keys",
            access_pb2.AccessRule(access=access_pb2.ACCESS_USER, publishable_keys=True),
        ),
        (
            "pk_on_public",
            access_pb2.AccessRule(
                access=access_pb2.ACCESS_PUBLIC, api_keys=True, publishable_keys=True
            ),
        ),
    ],
)
def test_publishable_keys_need_a_route_for_keys(name: str, rule: access_pb2.AccessRule) -> None:
    with pytest.raises(ValueError, match="publishable_keys without api_keys"):
        build_routes([(_service_with_rule(name, rule), "x")])  # type: ignore[list-item]


def test_the_visitors_upstream_is_built_in() -> None:
    assert GatewaySettings().visitors_target == "127.0.0.1:50055"
    with pytest.raises(ValidationError, match="visitors is built in"):
        GatewaySettings(
            extra_upstreams={"visitors": {"proto_module": "m", "service": "S", "target": "t"}}
        )


@pytest.mark.parametrize(
    "origin",
    [
        "https://shop.example.com",
        "http://localhost:3000",
        "https://[::1]:8443",
        "http://127.0.0.1:8080",
        "https://xn--bcher-kva.example",
    ],
)
def test_origins_as_browsers_send_them(origin: str) -> None:
    assert is_browser_origin(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "",
        "null",
        "https://shop.example.com/",
        "https://shop.example.com/path",
        "HTTPS://shop.example.com",
        "https://Shop.example.com",
        "https://shop.example.com:443",
        "http://shop.example.com:80",
        "https://shop.example.com:0",
        "https://shop.example.com:65536",
        "https://user@shop.example.com",
        "https://bücher.example",
        "ftp://shop.example.com",
        "https://-shop.example.com",
        "https://shop.example.com\n",
        "https://" + "a." * 150 + "com",
        "shop.example.com",
    ],
)
def test_anything_else_is_no_origin(origin: str) -> None:
    assert not is_browser_origin(origin)
