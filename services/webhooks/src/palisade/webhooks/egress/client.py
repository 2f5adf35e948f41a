"""The delivery HTTP client: one POST to a receiver, always ending in a recorded outcome.

Each attempt resolves the host afresh and checks EVERY address (urls.resolve_destination: one
forbidden address refuses the attempt, as at creation), then connects only to those checked
addresses: aiohttp gets a resolver that answers with them and nothing else (no second DNS
lookup, so a rebinding answer between check and connect never reaches a socket), and every
socket aiohttp wants is made by the injected Connector after the address it will be dialled to
is matched against the checked set once more. The URL keeps the host name, so the Host header,
TLS SNI and certificate verification all use the name, not the address.

What a receiver can do to us, and what it becomes (AttemptResult.error; status kept when one
was received):
- never answers, answers slowly or stalls mid-body: one total deadline (15 s by default) for
  everything from the DNS lookup to the last body byte -> "timeout";
- answers 3xx: never followed -> "redirect_not_followed";
- sends a huge body: we read at most max_body_bytes and hang up; the attempt counts by its
  status (the receiver answered; refusing it would re-deliver what it already took) with
  body_truncated set;
- sends an oversized or endless response head (lines over 8 KiB, more than 64 headers)
  -> "response_too_large";
- closes before or during the response -> "connection_closed" (an incomplete body fails the
  attempt even after a 2xx head: at-least-once prefers a duplicate to a loss);
- sends something that is not HTTP -> "invalid_response".
No exception escapes post() except cancellation of the caller's own task.

Not read from the environment: the proxies (trust_env=False), cookies (a dummy jar), and
compression (identity requested and never decoded, so no decompression bomb).
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, Protocol

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.http_exceptions import LineTooLong

from palisade.common.clock import Clock, SystemClock
from palisade.webhooks.egress.addresses import AddressPolicy, IPAddress, parse_address
from palisade.webhooks.egress.errors import InvalidUrl
from palisade.webhooks.egress.resolver import ResolutionFailed, Resolver
from palisade.webhooks.egress.urls import (
    DestinationRefused,
    WebhookUrl,
    parse_webhook_url,
    resolve_destination,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 15.0
DEFAULT_MAX_BODY_BYTES = 64 * 1024
# Retry-After beyond this is read as this: a receiver must not park a delivery for weeks.
DEFAULT_MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
USER_AGENT = "Palisade-Webhooks/1.0"
# The response head: at most this many header fields of at most 8 KiB each (aiohttp's parser
# enforces both), so a receiver cannot make us buffer an endless head.
MAX_RESPONSE_HEADERS = 64
MAX_HEADER_LINE_BYTES = 8190
# Ours to set, whatever the caller passes: framing and the connection are the client's job.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})

# Error codes (stable: stored as a delivery's last_error and shown in the delivery log).
INVALID_URL = "invalid_url"
DNS_FAILED = "dns_failed"
ADDRESS_NOT_ALLOWED = "address_not_allowed"
CONNECT_FAILED = "connect_failed"
TLS_FAILED = "tls_failed"
TIMEOUT = "timeout"
REDIRECT_NOT_FOLLOWED = "redirect_not_followed"
RESPONSE_TOO_LARGE = "response_too_large"
CONNECTION_CLOSED = "connection_closed"
INVALID_RESPONSE = "invalid_response"
REQUEST_FAILED = "request_failed"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """The outcome of one attempt. status: the HTTP status, 0 when none was received. error:
    a stable code (above) or None. retry_after: seconds the receiver asked us to wait (from
    Retry-After, seconds or an HTTP-date, capped), None when absent or unreadable. elapsed:
    seconds from the start to the outcome. peer: the address connected to, if any. body: at
    most max_body_bytes of the response body."""

    status: int
    error: str | None
    retry_after: float | None
    elapsed: float
    peer: str | None = None
    body: bytes = b""
    body_truncated: bool = False

    @property
    def succeeded(self) -> bool:
        return self.error is None and 200 <= self.status < 300


class Connector(Protocol):
    """Makes the socket for one TCP connection to address:port (aiohttp then connects exactly
    that socket to exactly that address). Tests inject one that records what would have been
    dialled and refuses anything outside loopback."""

    def open_socket(
        self, address: IPAddress, port: int, *, family: int, type: int, proto: int
    ) -> socket.socket: ...


class SocketConnector:
    """The real connector: a plain new socket of the address' family."""

    def open_socket(
        self, address: IPAddress, port: int, *, family: int, type: int, proto: int
    ) -> socket.socket:
        return socket.socket(family, type, proto)


class _PinnedResolver(AbstractResolver):
    """aiohttp's resolver for one attempt: the checked addresses of the one host, only."""

    def __init__(self, host: str, port: int, addresses: list[IPAddress]) -> None:
        self._host = host.rstrip(".").lower()
        self._port = port
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.rstrip(".").lower() != self._host or port != self._port:
            # Nothing else may be asked for: redirects are not followed and there is no proxy.
            raise OSError(errno.EACCES, "only the checked host is resolved")
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET if address.version == 4 else socket.AF_INET6,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in self._addresses
        ]

    async def close(self) -> None:
        return None


@dataclass(slots=True)
class _Progress:
    """What one attempt has learnt so far: kept when a deadline or a failure cuts it short."""

    status: int = 0
    retry_after: float | None = None
    peer: str | None = None
    refused_dial: bool = False
    sockets: list[socket.socket] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    body_truncated: bool = False


def parse_retry_after(value: str | None, *, now: datetime, cap_seconds: float) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date (RFC 9110 10.2.3), never
    negative, at most cap_seconds; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return cap_seconds if len(value) > 12 else min(float(value), cap_seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, min((when - now).total_seconds(), cap_seconds))


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _head_error(exc: aiohttp.ClientResponseError) -> str:
    """A response head aiohttp's parser refused: too large, or not HTTP."""
    for item in _chain(exc):
        if isinstance(item, LineTooLong):
            return RESPONSE_TOO_LARGE
    text = " ".join(str(item) for item in _chain(exc))
    if "Too many headers" in text or "Got more than" in text:
        return RESPONSE_TOO_LARGE
    return INVALID_RESPONSE


class DeliveryClient:
    """Sends webhook attempts. One per process is enough: each attempt has its own connection
    (pinned to that attempt's checked addresses), so nothing is shared between receivers."""

    def __init__(
        self,
        *,
        policy: AddressPolicy,
        resolver: Resolver,
        connector: Connector | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_retry_after_seconds: float = DEFAULT_MAX_RETRY_AFTER_SECONDS,
        clock: Clock | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if timeout_seconds <= 0 or max_body_bytes < 0 or max_retry_after_seconds < 0:
            raise ValueError("timeout must be positive, the bounds non-negative")
        self._policy = policy
        self._resolver = resolver
        self._connector = connector or SocketConnector()
        self._timeout = timeout_seconds
        self._max_body = max_body_bytes
        self._max_retry_after = max_retry_after_seconds
        self._clock = clock or SystemClock()
        self._ssl_context = ssl_context
        self._ssl_lock = asyncio.Lock()

    @property
    def timeout_seconds(self) -> float:
        return self._timeout

    async def post(
        self, url: str | WebhookUrl, body: bytes, headers: Mapping[str, str]
    ) -> AttemptResult:
        """POSTs body to url with headers (the signed webhook-* ones, typically); returns the
        outcome, whatever the receiver or the network does."""
        # perf_counter, not loop.time(): uvloop's clock moves in whole milliseconds.
        started = time.perf_counter()
        progress = _Progress()
        error: str | None
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                error = await self._attempt(url, body, headers, progress)
            if deadline.expired():
                # The deadline's cancellation surfaced inside aiohttp as another error (a
                # closed connection, say): it is still the deadline that ended the attempt.
                error = TIMEOUT
        except TimeoutError:
            # Ours, or aiohttp's own timer (a subclass): either way the receiver was too slow.
            error = TIMEOUT
        except Exception as exc:
            # Never raised from here: the worker records the attempt and moves on. Only the
            # exception's type is logged (its text may quote the URL, which may hold a token).
            log.warning("webhook attempt failed unexpectedly: %s", type(exc).__name__)
            error = REQUEST_FAILED
        return AttemptResult(
            status=progress.status,
            error=error,
            retry_after=progress.retry_after,
            elapsed=time.perf_counter() - started,
            peer=progress.peer,
            body=bytes(progress.body),
            body_truncated=progress.body_truncated,
        )

    async def _attempt(
        self,
        url: str | WebhookUrl,
        body: bytes,
        headers: Mapping[str, str],
        progress: _Progress,
    ) -> str | None:
        try:
            target = url if isinstance(url, WebhookUrl) else parse_webhook_url(url)
        except InvalidUrl:
            return INVALID_URL
        try:
            addresses = await resolve_destination(
                target, policy=self._policy, resolver=self._resolver
            )
        except ResolutionFailed:
            return DNS_FAILED
        except DestinationRefused as refused:
            log.info("webhook destination refused: %s", refused.reason)
            return ADDRESS_NOT_ALLOWED
        ssl_context: ssl.SSLContext | bool = await self._tls_context() if target.is_https else False
        connector = aiohttp.TCPConnector(
            resolver=_PinnedResolver(target.host, target.port, addresses),
            use_dns_cache=False,
            force_close=True,
            limit=0,
            ssl=ssl_context,
            socket_factory=self._socket_factory(addresses, progress),
        )
        session = aiohttp.ClientSession(
            connector=connector,
            connector_owner=True,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
            # Our deadline rules (post()); aiohttp's own total is the same, as a backstop.
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            max_line_size=MAX_HEADER_LINE_BYTES,
            max_field_size=MAX_HEADER_LINE_BYTES,
            max_headers=MAX_RESPONSE_HEADERS,
            read_bufsize=min(max(self._max_body, 1024), 64 * 1024),
            trace_configs=[_PEER_TRACE],
        )
        try:
            return await self._exchange(session, target, body, headers, progress)
        finally:
            await session.close()

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        target: WebhookUrl,
        body: bytes,
        headers: Mapping[str, str],
        progress: _Progress,
    ) -> str | None:
        sent = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Accept": "*/*",
            "Accept-Encoding": "identity",
        }
        for name, value in headers.items():
            if name.lower() not in _RESERVED_HEADERS:
                sent[name] = value
        try:
            async with session.post(
                yarl.URL(target.url, encoded=True),
                data=body,
                headers=sent,
                allow_redirects=False,
                trace_request_ctx=progress,
            ) as response:
                progress.status = response.status
                progress.retry_after = parse_retry_after(
                    response.headers.get("Retry-After"),
                    now=self._clock.now(),
                    cap_seconds=self._max_retry_after,
                )
                await self._read_body(response, progress)
                if 300 <= response.status < 400:
                    return REDIRECT_NOT_FOLLOWED
                return None
        except TimeoutError:
            # Our deadline or aiohttp's backstop timer, whichever surfaced inside aiohttp
            # (aiohttp.ServerTimeoutError is one too). Caught before OSError, its base class.
            return TIMEOUT
        except aiohttp.ClientConnectorCertificateError:
            return TLS_FAILED
        except aiohttp.ClientSSLError:
            return TLS_FAILED
        except aiohttp.ClientConnectorError:
            return ADDRESS_NOT_ALLOWED if progress.refused_dial else CONNECT_FAILED
        except aiohttp.ClientResponseError as exc:
            return _head_error(exc)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
            return CONNECTION_CLOSED
        except aiohttp.ClientOSError:
            return CONNECTION_CLOSED
        except aiohttp.InvalidURL:
            return INVALID_URL
        except (aiohttp.ClientError, OSError) as exc:
            log.info("webhook attempt failed: %s", type(exc).__name__)
            return REQUEST_FAILED

    async def _read_body(self, response: aiohttp.ClientResponse, progress: _Progress) -> None:
        """At most max_body_bytes; one byte more tells us the body is larger, and then we hang
        up (closing the connection) instead of draining whatever else is coming."""
        limit = self._max_body
        while len(progress.body) <= limit:
            chunk = await response.content.read(limit + 1 - len(progress.body))
            if not chunk:
                return
            progress.body += chunk
        del progress.body[limit:]
        progress.body_truncated = True
        response.close()

    def _socket_factory(
        self, addresses: list[IPAddress], progress: _Progress
    ) -> Callable[[tuple[Any, ...]], socket.socket]:
        checked = set(addresses)

        def make_socket(addr_info: tuple[Any, ...]) -> socket.socket:
            family, type_, proto, _, sockaddr = addr_info
            address = parse_address(str(sockaddr[0]))
            if address not in checked:
                # Unreachable while _PinnedResolver is the only source of addresses: the last
                # line of the pin, in case a future aiohttp finds another way to an address.
                progress.refused_dial = True
                raise OSError(errno.EACCES, "the address was not checked")
            made = self._connector.open_socket(
                address, int(sockaddr[1]), family=family, type=type_, proto=proto
            )
            progress.sockets.append(made)
            return made

        return make_socket

    async def _tls_context(self) -> ssl.SSLContext:
        # Made once, on first use, off the loop: loading the CA bundle reads files.
        if self._ssl_context is None:
            async with self._ssl_lock:
                if self._ssl_context is None:
                    self._ssl_context = await asyncio.to_thread(ssl.create_default_context)
        return self._ssl_context


async def _note_peer(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    """Once the request head is out, the one socket of ours still open is the connected one
    (happy eyeballs has closed the losers): its peer is the address actually reached."""
    progress = context.trace_request_ctx
    if not isinstance(progress, _Progress):
        return
    for made in progress.sockets:
        if made.fileno() == -1:
            continue
        try:
            progress.peer = str(made.getpeername()[0])
        except OSError:
            continue
        return


_PEER_TRACE = aiohttp.TraceConfig()
_PEER_TRACE.on_request_headers_sent.append(_note_peer)
