"""CORS for the routes publishable keys may call (AccessRule.publishable_keys).

A publishable key lives in a web page (the product's chat widget) and is accepted only from its
own allowedOrigins. For the page to call the API, the browser first sends a preflight
(`OPTIONS` with `Origin` and `Access-Control-Request-Method`) and then, if the preflight allows
it, the real request; it shows the page the real answer only if that answer carries
`Access-Control-Allow-Origin`.

Which origins a preflight is answered for: **any well-formed origin, on these routes only, for
the methods of the route that admit publishable keys.** A preflight carries no key (browsers
never send `Authorization` on it), so the gateway cannot know the allowedOrigins of the key the
page is about to send; there are as many lists as keys, in every workspace. Answering the
preflight is safe because it decides nothing:

- the real request is authenticated as usual: a publishable key from an origin not on its list
  is refused (403 `origin_not_allowed`) before any backend sees it, and that answer carries no
  `Access-Control-Allow-Origin`, so a foreign page cannot even read the refusal;
- the credential is the key in `Authorization`, which the page itself must send: there are no
  cookies and never `Access-Control-Allow-Credentials`, so a foreign page gains no ambient
  authority from a permissive preflight (CORS protects a visitor's cookies, not the API: any
  server can send any `Origin`);
- the routes, their methods and headers are public anyway (`/openapi.json`).

The stricter alternative, answering only origins that appear in some key's allowedOrigins,
would need a lookup per preflight (or every workspace's origins in every replica) and would
turn the preflight into an oracle across tenants: anyone could learn which sites are some
customer's. The actual answer is where the decision is made, once the key is known:
`Access-Control-Allow-Origin` echoes the origin only when a publishable key was verified for
it (success and error answers alike, so the page can read why it was refused, e.g. 400
`invalid_email` or 429 with Retry-After).

Every other route keeps the gateway's plain CORS rule (PALISADE_GATEWAY_CORS_ORIGINS only).
"""

from __future__ import annotations

from palisade.common.origins import is_browser_origin
from palisade.gateway.routes import MethodNotAllowed, Route, RouteNotFound, Router

# What a page may send: the key, a JSON body, and its own request id for support tickets. The
# gateway takes no idempotency header, so none is listed.
ALLOW_HEADERS = "Authorization, Content-Type, X-Request-Id"
# What a page may read from the answer besides the body and the CORS-safelisted headers.
EXPOSE_HEADERS = "X-Request-Id, Retry-After, RateLimit, RateLimit-Policy"
# The preflight's answer depends on the path and method only (never on a key's state), so
# browsers may keep it long: two hours, Chromium's ceiling.
MAX_AGE_SECONDS = 7200
_VARY = "Origin, Access-Control-Request-Method"


class BrowserRoutes:
    """The preflight answers of the publishable-key routes, computed once at start."""

    def __init__(self, routes: list[Route], router: Router) -> None:
        """router: the dispatcher's own, so a preflight finds the very route its real request
        will reach."""
        self._router = router
        methods: dict[str, set[str]] = {}
        for route in routes:
            if route.access.publishable_keys:
                methods.setdefault(route.template, set()).add(route.http_method)
        self._answers = {
            template: {
                "Access-Control-Allow-Methods": ", ".join(sorted(allowed)),
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": str(MAX_AGE_SECONDS),
                "Vary": _VARY,
            }
            for template, allowed in methods.items()
        }

    @property
    def templates(self) -> frozenset[str]:
        return frozenset(self._answers)

    def preflight(
        self, path: str, origin: str, requested_method: str | None
    ) -> tuple[str, dict[str, str]] | None:
        """(route template, headers) allowing `requested_method` on `path` from `origin`, or
        None when this is not a preflight for a publishable-key route and method."""
        if requested_method is None or not self._answers or not is_browser_origin(origin):
            return None
        try:
            route, _ = self._router.match(requested_method, path)
        except (RouteNotFound, MethodNotAllowed):
            return None
        if not route.access.publishable_keys:
            return None  # e.g. GET /v1/visitors (a lookup): secret keys and people only
        return route.template, {
            **self._answers[route.template],
            "Access-Control-Allow-Origin": origin,
        }
