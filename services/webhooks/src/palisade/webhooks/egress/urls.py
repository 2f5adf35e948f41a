"""Webhook URLs: the syntax a URL must have, and the destination check done at creation (and,
through the same function, at every attempt by the delivery client).

Syntax (parse_webhook_url, `invalid_url`): http or https, at most 2,048 characters, no
whitespace, control or invisible format characters anywhere, no backslash (URL parsers
disagree about it), no userinfo ("user:pass@"), no fragment, a host, a port 1-65535 when
given. The host is an IPv4 dotted quad, a bracketed IPv6 literal without a zone, or a DNS name
mapped and encoded by IDNA 2008 with UTS 46 (so fullwidth letters and dots, and "Example.COM",
are "example.com"); a name ending in a number that is not a canonical dotted quad ("127.1",
"2130706433", "0x7f.0.0.1") is refused, as browsers and aiohttp read those as IPv4 in forms
some resolvers expand. The path and query are ASCII (percent-encoded beyond it). The stored
form is canonical: lower-case scheme and host, default port dropped, "/" for an empty path.

Destination (resolve_destination, `url_not_allowed`): every address the host resolves to must
be allowed by the AddressPolicy; a host with one forbidden address among public ones is
refused whole (a split answer is a misconfiguration or a rebinding set-up, and refusing keeps
creation and delivery deterministic). Plain http only when every address is in an allowlisted
network; elsewhere the body would travel readable.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import unicodedata
from dataclasses import dataclass

import idna

from palisade.webhooks.egress.addresses import AddressPolicy, IPAddress
from palisade.webhooks.egress.errors import InvalidUrl, UrlNotAllowed
from palisade.webhooks.egress.resolver import ResolutionFailed, Resolver

MAX_URL_CHARS = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
# How long creation waits for the host's addresses before refusing the URL.
CREATION_RESOLVE_SECONDS = 5.0

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_PORT = re.compile(r"[0-9]{1,5}")
_DOTTED_QUAD = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
# A label the WHATWG URL standard reads as a number: decimal, or 0x hex (octal is decimal-ish).
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")
# What may follow the authority: RFC 3986 path and query characters, "%" escapes checked below.
_PATH_AND_QUERY = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True)
class WebhookUrl:
    """A URL that passed the syntax checks. host: ASCII (IDNA-encoded, lower case, IPv6 without
    brackets); literal: the address when the host is an IP literal (then never resolved)."""

    url: str
    scheme: str
    host: str
    port: int
    target: str
    literal: IPAddress | None

    @property
    def is_https(self) -> bool:
        return self.scheme == "https"


class DestinationRefused(Exception):
    """The host resolved, but an address (or plain http) is not allowed. reason: a stable
    word from the policy (e.g. "loopback", "metadata", "mapped_private") or "plain_http"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _has_forbidden_character(text: str) -> bool:
    for char in text:
        if char == "\\":
            return True
        category = unicodedata.category(char)
        # Cc control, Cf format (zero-width and bidi marks), Z* every kind of space.
        if category in ("Cc", "Cf", "Cs", "Co", "Cn") or category.startswith("Z"):
            return True
    return False


def _ends_in_number(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    return bool(labels) and _NUMERIC_LABEL.fullmatch(labels[-1]) is not None


def _parse_host(raw: str) -> tuple[str, IPAddress | None]:
    if raw.startswith("["):
        if not raw.endswith("]") or "%" in raw:
            raise InvalidUrl("an IPv6 host is written [address], without a zone")
        try:
            v6 = ipaddress.IPv6Address(raw[1:-1])
        except ValueError:
            raise InvalidUrl("the IPv6 host is not an IPv6 address") from None
        return v6.compressed, v6
    if not raw:
        raise InvalidUrl("the URL has no host")
    try:
        host = idna.encode(raw, uts46=True, std3_rules=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        raise InvalidUrl("the host is not a valid domain name") from None
    if len(host.rstrip(".")) > 253 or not host.rstrip("."):
        raise InvalidUrl("the host is not a valid domain name")
    if _DOTTED_QUAD.fullmatch(host) is not None:
        try:
            v4 = ipaddress.IPv4Address(host)
        except ValueError:
            raise InvalidUrl("the IPv4 host is not an IPv4 address") from None
        return str(v4), v4
    if _ends_in_number(host):
        raise InvalidUrl("an IPv4 host is written as four decimal numbers (a.b.c.d)")
    return host, None


def parse_webhook_url(text: str) -> WebhookUrl:
    """The syntax checks of the module docstring; raises InvalidUrl (`invalid_url`)."""
    if not isinstance(text, str) or not text or len(text) > MAX_URL_CHARS:
        raise InvalidUrl()
    if _has_forbidden_character(text):
        raise InvalidUrl("the URL contains whitespace, a control character or a backslash")
    found = _SCHEME.match(text)
    if found is None:
        raise InvalidUrl("the URL must start with https:// (or http://)")
    scheme = found.group(1).lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidUrl("the URL's scheme must be https (or http)")
    rest = text[found.end() :]
    if "#" in rest:
        raise InvalidUrl("the URL must not have a fragment")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, target = rest[:cut], rest[cut:]
    if "@" in authority:
        raise InvalidUrl("the URL must not carry credentials")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise InvalidUrl("an IPv6 host is written [address], without a zone")
        raw_host, after = authority[: close + 1], authority[close + 1 :]
    else:
        raw_host, colon, given_port = authority.partition(":")
        after = colon + given_port
    port = DEFAULT_PORTS[scheme]
    if after:
        # After the host only ":<digits>" may come ("[::1]x" and "host:" are refused).
        if not after.startswith(":") or _PORT.fullmatch(after[1:]) is None:
            raise InvalidUrl("the URL's port must be a number from 1 to 65535")
        port = int(after[1:])
        if not 1 <= port <= 65535:
            raise InvalidUrl("the URL's port must be a number from 1 to 65535")
    host, literal = _parse_host(raw_host)
    if not target.isascii() or _PATH_AND_QUERY.fullmatch(target) is None:
        raise InvalidUrl("the URL's path and query must be ASCII (percent-encode the rest)")
    if _BAD_ESCAPE.search(target):
        raise InvalidUrl("the URL has a malformed percent escape")
    if not target.startswith("/"):
        target = "/" + target
    shown_host = f"[{host}]" if isinstance(literal, ipaddress.IPv6Address) else host
    shown_port = "" if port == DEFAULT_PORTS[scheme] else f":{port}"
    return WebhookUrl(
        url=f"{scheme}://{shown_host}{shown_port}{target}",
        scheme=scheme,
        host=host,
        port=port,
        target=target,
        literal=literal,
    )


def check_destination(
    url: WebhookUrl, addresses: list[IPAddress], *, policy: AddressPolicy
) -> None:
    """Raises DestinationRefused unless every address is allowed (and, for plain http, every
    address is allowlisted)."""
    if not addresses:
        raise DestinationRefused("no_address")
    refused = policy.first_refused(addresses)
    if refused is not None:
        raise DestinationRefused(refused.reason or "forbidden")
    if not url.is_https and not all(policy.is_allowlisted(a) for a in addresses):
        raise DestinationRefused("plain_http")


async def resolve_destination(
    url: WebhookUrl, *, policy: AddressPolicy, resolver: Resolver
) -> list[IPAddress]:
    """The checked addresses of the URL's host, to connect to and nothing else. An IP literal
    is its own only address (never handed to the resolver). Raises ResolutionFailed or
    DestinationRefused."""
    if url.literal is not None:
        addresses = [url.literal]
    else:
        addresses = list(await resolver.resolve(url.host, url.port))
    check_destination(url, addresses, policy=policy)
    return addresses


# One answer for a host that does not resolve and one that resolves inside the network: anyone
# with webhooks:manage can name any host, and two answers would map the cluster's private DNS
# (which internal names exist) from outside. Plain http keeps its own message: it is given only
# when every address is public (or allowlisted), which tells nothing about the inside.
_NOT_ALLOWED_MESSAGE = "url's host must resolve, and only to public addresses"
_PLAIN_HTTP_MESSAGE = "url must use https (plain http only reaches allowlisted networks)"


async def check_webhook_url(
    text: str,
    *,
    policy: AddressPolicy,
    resolver: Resolver,
    resolve_seconds: float = CREATION_RESOLVE_SECONDS,
) -> WebhookUrl:
    """Everything a URL must pass to be registered: the syntax, then the destination, now.
    Raises InvalidUrl or UrlNotAllowed (each an INVALID_ARGUMENT with its stable code)."""
    url = parse_webhook_url(text)
    try:
        async with asyncio.timeout(resolve_seconds):
            await resolve_destination(url, policy=policy, resolver=resolver)
    except (ResolutionFailed, TimeoutError):
        raise UrlNotAllowed(_NOT_ALLOWED_MESSAGE) from None
    except DestinationRefused as refused:
        if refused.reason == "plain_http":
            raise UrlNotAllowed(_PLAIN_HTTP_MESSAGE) from None
        raise UrlNotAllowed(_NOT_ALLOWED_MESSAGE) from None
    return url
