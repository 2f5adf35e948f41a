"""Who may call whom inside Palisade: the one list of issuer->audience edges.

Every internal call travels an edge, and every edge has its own signing key (see
palisade.common.edge_keys): a service holds the keys of the edges it is on and no others, so
it can mint assertions only as itself, and only to the services it is meant to call. A new
service adds its lines here; `palisade-keys init` (and the embedded default on start) then
creates the new edges' keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Principals a delegating issuer (the gateway) may assert besides itself.
PERSON_PRINCIPAL_PREFIXES = ("user:", "apikey:")
ANONYMOUS_PRINCIPAL = "anonymous"


@dataclass(frozen=True, order=True)
class Edge:
    issuer: str  # the service that signs
    audience: str  # the service that verifies
    # May the issuer assert principals other than itself (people, API keys, anonymous
    # clients)? Only the gateway, which authenticated them at the edge, ever may.
    delegates: bool = False

    @property
    def name(self) -> str:
        return f"{self.issuer}:{self.audience}"

    def involves(self, service: str) -> bool:
        return service in (self.issuer, self.audience)

    def allows_principal(self, principal: str) -> bool:
        if principal == f"service:{self.issuer}":
            return True
        if not self.delegates:
            return False
        return principal == ANONYMOUS_PRINCIPAL or principal.startswith(PERSON_PRINCIPAL_PREFIXES)


EDGES: tuple[Edge, ...] = (
    # The gateway forwards clients' calls (as the person, key or anonymous client it
    # authenticated) and validates tokens and follows revocations (as itself).
    Edge("gateway", "auth", delegates=True),
    # Auth encrypts PII, TOTP secrets, mail and refresh successors, and blind-indexes emails.
    Edge("auth", "crypto"),
    # The gateway forwards key-management calls, verifies API keys, reports their use and
    # follows key revocations.
    Edge("gateway", "apikeys", delegates=True),
    # API keys: the recoverable secret is encrypted by crypto; leak reports and new keys are
    # told to the workspace's owners through auth's security notices.
    Edge("apikeys", "crypto"),
    Edge("apikeys", "auth"),
    # A member removed, an account disabled or deleted: auth asks apikeys to revoke the keys
    # the person created (RevokeKeysOfUser, from auth's key revocation outbox).
    Edge("auth", "apikeys"),
    # The security log: every service with an outbox ships its events to audit (Ingest, as
    # itself); the gateway forwards people's log queries; audit encrypts events' PII fields
    # under their subject's key.
    Edge("auth", "audit"),
    Edge("apikeys", "audit"),
    Edge("gateway", "audit", delegates=True),
    Edge("audit", "crypto"),
    # Audit accepts events only for workspaces auth knows (auth's workspace directory).
    Edge("audit", "auth"),
    # Visitors: PII encrypted (and blind-indexed, shredded on erasure) through crypto, events
    # shipped to audit, client calls forwarded by the gateway (publishable keys included).
    Edge("visitors", "crypto"),
    Edge("visitors", "audit"),
    Edge("gateway", "visitors", delegates=True),
    # Webhooks: endpoint management forwarded by the gateway; URLs and signing secrets sealed
    # through crypto; its webhook.* events shipped to audit, whose StreamEvents feeds the
    # deliveries; owners told through auth's notices when an endpoint is disabled.
    Edge("gateway", "webhooks", delegates=True),
    Edge("webhooks", "crypto"),
    Edge("webhooks", "audit"),
    Edge("webhooks", "auth"),
    # The bench-only echo backend behind the gateway (bench/p3_forwarded.py); it verifies
    # nothing, but the gateway signs for every upstream it forwards to.
    Edge("gateway", "echo", delegates=True),
)


def edge_name(issuer: str, audience: str) -> str:
    return f"{issuer}:{audience}"


def parse_edge_name(text: str, edges: Iterable[Edge] = EDGES) -> Edge:
    """The edge named "issuer:audience" (or "issuer->audience"); ValueError if unlisted."""
    issuer, sep, audience = text.replace("->", ":").partition(":")
    for edge in edges:
        if sep and (edge.issuer, edge.audience) == (issuer, audience):
            return edge
    raise ValueError(f"no such edge: {text!r}")


def edges_of(service: str, edges: Sequence[Edge] = EDGES) -> tuple[Edge, ...]:
    """The edges a service is on, as issuer or audience."""
    return tuple(e for e in edges if e.involves(service))


def services_of(edges: Sequence[Edge] = EDGES) -> list[str]:
    """Every service named by an edge, sorted."""
    return sorted({name for e in edges for name in (e.issuer, e.audience)})
