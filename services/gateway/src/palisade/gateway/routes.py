"""The route table, built from the protos: google.api.http annotations plus the access rule.

Adding a public RPC means annotating it in its proto; no handler is written here.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from palisade_api.common.v1 import access_pb2

_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)(?:=\*)?\}")


@dataclass(frozen=True)
class Route:
    http_method: str
    template: str
    pattern: re.Pattern[str]
    variables: tuple[str, ...]
    body: str  # "" (no body), "*" (the whole request message) or one field's name
    method: MethodDescriptor
    audience: str  # the service that answers, e.g. "auth"
    access: access_pb2.AccessRule

    @property
    def full_method(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"


class RouteNotFound(Exception):
    pass


class MethodNotAllowed(Exception):
    def __init__(self, allowed: list[str]) -> None:
        super().__init__("method not allowed")
        self.allowed = allowed


def _verb(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind not in ("get", "post", "put", "patch", "delete"):
        raise ValueError(f"unsupported HTTP rule pattern {kind!r}")
    return kind.upper(), getattr(rule, kind)


def _compile(template: str, method: MethodDescriptor) -> tuple[re.Pattern[str], tuple[str, ...]]:
    fields = method.input_type.fields_by_name
    variables: list[str] = []
    parts: list[str] = []
    position = 0
    for match in _VARIABLE.finditer(template):
        name = match.group(1)
        if name not in fields:
            raise ValueError(f"{template}: {name} is not a field of {method.input_type.name}")
        parts.append(re.escape(template[position : match.start()]))
        parts.append(f"(?P<{name}>[^/]+)")
        variables.append(name)
        position = match.end()
    parts.append(re.escape(template[position:]))
    # \Z, not $: "$" also matches before a final newline, so "/v1/me\n" was /v1/me.
    return re.compile("^" + "".join(parts) + r"\Z"), tuple(variables)


def service_descriptor(proto_module: str, service: str) -> ServiceDescriptor:
    """A service's descriptor from its generated module (importing it registers the file)."""
    module = importlib.import_module(proto_module)
    services: dict[str, ServiceDescriptor] = module.DESCRIPTOR.services_by_name
    if service not in services:
        raise ValueError(f"{proto_module} defines no service {service}")
    return services[service]


def build_routes(services: list[tuple[ServiceDescriptor, str]]) -> list[Route]:
    """Every annotated method of the given (service, audience) pairs; fails on bad annotations,
    and on two methods claiming the same HTTP method and path (the first would always win)."""
    routes: list[Route] = []
    claimed: dict[tuple[str, str], str] = {}
    for service, audience in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue  # internal-only RPC
            rule = options.Extensions[annotations_pb2.http]
            access = options.Extensions[access_pb2.access]
            if access.access == access_pb2.ACCESS_UNSPECIFIED:
                raise ValueError(f"{method.full_name} is public but declares no access rule")
            if access.restricted_action and access.access != access_pb2.ACCESS_USER:
                # Only signed-in people carry restrictions: the rule would never apply.
                raise ValueError(f"{method.full_name}: restricted_action on a route not for people")
            if access.publishable_keys and not (
                access.api_keys and access.access == access_pb2.ACCESS_USER
            ):
                # A publishable key is a key: a route that admits no keys never sees one, and
                # the CORS answer for such a route (see palisade.gateway.cors) would open it to
                # browsers for nothing.
                raise ValueError(f"{method.full_name}: publishable_keys without api_keys")
            verb, template = _verb(rule)
            shape = (verb, _VARIABLE.sub("{}", template))  # /a/{id} and /a/{name} collide
            earlier = claimed.get(shape)
            if earlier is not None:
                raise ValueError(f"{verb} {template}: both {earlier} and {method.full_name}")
            claimed[shape] = method.full_name
            pattern, variables = _compile(template, method)
            routes.append(
                Route(verb, template, pattern, variables, rule.body, method, audience, access)
            )
    return routes


def _specificity(route: Route) -> tuple[int, ...]:
    """Sorts literal segments before variables, segment by segment from the left: a literal
    path (`/v1/chats/search`) is never taken as a template of the same shape that has a
    variable there (`/v1/chats/{chat_id}`), whichever order the protos list them in."""
    return tuple(1 if "{" in segment else 0 for segment in route.template.split("/"))


def matching_order(routes: list[Route]) -> list[Route]:
    """The routes in the order match() must try them (computed once, at start)."""
    return sorted(routes, key=_specificity)  # stable: equal ones keep the protos' order


def match(routes: list[Route], http_method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route for a request, trying each route's pattern in turn (`routes` in
    matching_order()): the reference Router must agree with, and what tools use."""
    allowed: list[str] = []
    for route in routes:
        found = route.pattern.match(path)
        if found is None:
            continue
        if route.http_method == http_method:
            return route, found.groupdict()
        allowed.append(route.http_method)
    if allowed:
        raise MethodNotAllowed(sorted(set(allowed)))
    raise RouteNotFound()


@dataclass
class _Node:
    """One path segment of the route tree."""

    literal: dict[str, _Node] = field(default_factory=dict)
    variable: _Node | None = None  # any non-empty segment, for a template variable here
    routes: dict[str, Route] = field(default_factory=dict)  # templates ending here, by method


class Router:
    """The route table as a tree of path segments, built once at start: a request walks its
    path's few segments (a dict lookup each) instead of trying every route's regex in turn,
    which cost microseconds per request for the routes at the end of the list. Literal
    segments are tried before variables, so it answers exactly as match() over
    matching_order() does."""

    def __init__(self, routes: list[Route]) -> None:
        self._root = _Node()
        # Paths without variables, answered by one lookup (most requests): such a template
        # wins over every template with a variable on the same path.
        self._literal: dict[str, dict[str, Route]] = {}
        for route in routes:
            if not route.variables:
                self._literal.setdefault(route.template, {}).setdefault(route.http_method, route)
            node = self._root
            for segment in route.template.split("/")[1:]:
                if _VARIABLE.fullmatch(segment):
                    if node.variable is None:
                        node.variable = _Node()
                    node = node.variable
                elif "{" in segment or "}" in segment:
                    raise ValueError(f"{route.template}: a variable must be a whole segment")
                else:
                    node = node.literal.setdefault(segment, _Node())
            node.routes.setdefault(route.http_method, route)  # build_routes refused twins

    def match(self, http_method: str, path: str) -> tuple[Route, dict[str, str]]:
        methods = self._literal.get(path)
        if methods is not None:
            literal = methods.get(http_method)
            if literal is not None:
                return literal, {}
        if not path.startswith("/"):
            raise RouteNotFound()
        segments = path[1:].split("/")
        values: list[str] = []
        route = _find(self._root, segments, 0, http_method, values)
        if route is not None:
            return route, dict(zip(route.variables, values, strict=True))
        allowed: set[str] = set()
        _allowed(self._root, segments, 0, allowed)
        if allowed:
            raise MethodNotAllowed(sorted(allowed))
        raise RouteNotFound()


def _find(
    node: _Node, segments: list[str], index: int, http_method: str, values: list[str]
) -> Route | None:
    """The first route (literal segments first) for the rest of the path and this method;
    values: the variables' segments on the way (left as found on success)."""
    if index == len(segments):
        return node.routes.get(http_method)
    segment = segments[index]
    child = node.literal.get(segment)
    if child is not None:
        found = _find(child, segments, index + 1, http_method, values)
        if found is not None:
            return found
    if node.variable is not None and segment:
        values.append(segment)
        found = _find(node.variable, segments, index + 1, http_method, values)
        if found is not None:
            return found
        values.pop()
    return None


def _allowed(node: _Node, segments: list[str], index: int, allowed: set[str]) -> None:
    """Every method some route answers on this path (for a 405's Allow)."""
    if index == len(segments):
        allowed.update(node.routes)
        return
    segment = segments[index]
    child = node.literal.get(segment)
    if child is not None:
        _allowed(child, segments, index + 1, allowed)
    if node.variable is not None and segment:
        _allowed(node.variable, segments, index + 1, allowed)
