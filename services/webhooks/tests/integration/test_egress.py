"""The delivery client against real local receivers, and its refusals (SECURITY.md 49).

Every attempt resolves through the FakeResolver and gets its sockets from the
LoopbackOnlyConnector (tests/conftest.py says why no packet can leave 127.0.0.0/8 and ::1,
even with the address guard broken). Real sockets reach only the aiohttp and raw asyncio
receivers below, on 127.0.0.1. Timeouts are short and configurable; the only waits in the
receivers are on an Event that never fires.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks import Webhook

from palisade.common.clock import ManualClock
from palisade.webhooks.egress.addresses import AddressPolicy, parse_allowed_networks
from palisade.webhooks.egress.client import DeliveryClient
from palisade.webhooks.egress.resolver import ResolutionFailed, SystemResolver
from palisade.webhooks.egress.urls import check_webhook_url
from palisade.webhooks.signing import generate_secret, signed_headers

LOCAL = AddressPolicy(allowed_networks=parse_allowed_networks('["127.0.0.0/8"]'))
# Tests about timeouts use the short one; the others a long one, so that a loaded machine
# (2 cores, several test runs) never turns their outcome into a timeout.
SHORT_TIMEOUT = 0.5
LONG_TIMEOUT = 20.0
# Upper bound on how late past its deadline a timed-out attempt may end, on a loaded machine.
SLACK = 5.0
# How early a deadline may fire: asyncio runs a timer once it is within the loop's clock
# resolution, and elapsed is read from perf_counter, not the loop's clock (CI saw 2.99997 s
# for a 3 s timeout).
EARLY = 0.05
BODY = json.dumps(
    {"type": "webhook.test", "timestamp": "2026-12-04T01:00:00Z", "data": {"n": 1}},
    separators=(",", ":"),
).encode()
HEADERS = {"webhook-id": "0123456789abcdef0123456789abcdef"}
GIB = 1 << 30


@dataclass
class Hit:
    path: str
    host: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int
    hits: list[Hit] = field(default_factory=list)
    huge_bytes_written: int = 0
    huge_done: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


async def _start(app: web.Application) -> tuple[web.AppRunner, int]:
    # handler_cancellation: a hanging handler ends when the client hangs up, so cleanup never
    # waits on it.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[Receiver, Receiver]]:
    """The receiver under test, and a second one a redirect points to (it must see no hit)."""
    never = asyncio.Event()
    runners: list[web.AppRunner] = []

    target_app = web.Application()
    target = Receiver(port=0)

    async def target_handler(request: web.Request) -> web.Response:
        target.hits.append(Hit(request.path, request.host, dict(request.headers), b""))
        return web.Response(status=200)

    target_app.router.add_route("*", "/{tail:.*}", target_handler)
    runner, target.port = await _start(target_app)
    runners.append(runner)

    app = web.Application()
    main = Receiver(port=0)

    async def record(request: web.Request) -> None:
        main.hits.append(
            Hit(request.path, request.host, dict(request.headers), await request.read())
        )

    async def status(request: web.Request) -> web.Response:
        await record(request)
        code = int(request.match_info["code"])
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        if "location" in request.query:
            headers["Location"] = request.query["location"]
        return web.Response(status=code, headers=headers, body=b"answer")

    async def hang(request: web.Request) -> web.Response:
        await record(request)
        await never.wait()
        raise AssertionError("unreachable")

    async def hang_mid_body(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse(status=200)
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"partial")
        await never.wait()
        raise AssertionError("unreachable")

    async def huge(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            while main.huge_bytes_written < GIB:
                await response.write(chunk)
                main.huge_bytes_written += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: what we want
        finally:
            main.huge_done.set()
        return response

    app.router.add_route("POST", "/status/{code}", status)
    app.router.add_route("POST", "/hang", hang)
    app.router.add_route("POST", "/hang-mid-body", hang_mid_body)
    app.router.add_route("POST", "/huge", huge)
    runner, main.port = await _start(app)
    runners.append(runner)
    try:
        yield main, target
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def raw_receiver() -> AsyncIterator[Callable[[bytes, bool], Awaitable[int]]]:
    """A TCP server that reads the request head and body, writes the given bytes, then either
    closes the connection or keeps it open until the test ends (an Event that never fires)."""
    never = asyncio.Event()
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(answer: bytes, close: bool) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(answer)
                await writer.drain()
                if not close:
                    await never.wait()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    try:
        yield start
    finally:
        for writer in writers:
            writer.close()
        for server in servers:
            server.close()
            await server.wait_closed()


def _client(resolver, connector, *, policy: AddressPolicy = LOCAL, **kwargs) -> DeliveryClient:
    kwargs.setdefault("timeout_seconds", LONG_TIMEOUT)
    return DeliveryClient(policy=policy, resolver=resolver, connector=connector, **kwargs)


# -- real deliveries to local receivers (allowlist 127.0.0.0/8, plain http) ------------------


async def test_delivery_is_signed_pinned_and_carries_the_host_name(
    receivers, resolver, connector
) -> None:
    main, _ = receivers
    resolver.add("receiver.example.com", ["127.0.0.1"])
    secret = generate_secret()
    headers = signed_headers([secret], HEADERS["webhook-id"], int(time.time()), BODY)
    result = await _client(resolver, connector).post(
        main.url("/status/200", host="receiver.example.com"), BODY, headers
    )
    assert result.succeeded
    assert result.status == 200
    assert result.error is None
    assert result.peer == "127.0.0.1"
    assert result.body == b"answer"
    assert not result.body_truncated
    assert connector.dialled == [("127.0.0.1", main.port)]
    assert resolver.calls["receiver.example.com"] == 1
    (hit,) = main.hits
    # Connected to the address, but the request names the host (Host; SNI under https).
    assert hit.host == f"receiver.example.com:{main.port}"
    assert hit.body == BODY
    assert hit.headers["Content-Type"] == "application/json"
    # The receiver's view verifies with the independent implementation.
    assert Webhook(secret).verify(hit.body, hit.headers) == json.loads(BODY)


@pytest.mark.parametrize("code", [410, 500, 404, 429])
async def test_failure_statuses_are_recorded(receivers, resolver, connector, code: int) -> None:
    main, _ = receivers
    result = await _client(resolver, connector).post(main.url(f"/status/{code}"), BODY, HEADERS)
    assert result.status == code
    assert result.error is None
    assert not result.succeeded
    assert len(main.hits) == 1


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(receivers, resolver, connector, code: int) -> None:
    main, target = receivers
    location = target.url("/stolen")
    result = await _client(resolver, connector).post(
        main.url(f"/status/{code}?location={location}"), BODY, HEADERS
    )
    assert result.status == code
    assert result.error == "redirect_not_followed"
    assert not result.succeeded
    assert len(main.hits) == 1
    assert target.hits == []
    assert connector.dialled == [("127.0.0.1", main.port)]


async def test_retry_after_seconds_http_date_and_cap(receivers, resolver, connector) -> None:
    main, _ = receivers
    clock = ManualClock(datetime(2026, 12, 4, 1, 0, 0, tzinfo=UTC))
    client = _client(resolver, connector, clock=clock, max_retry_after_seconds=3600)

    seconds = await client.post(main.url("/status/503?retry_after=120"), BODY, HEADERS)
    assert seconds.status == 503
    assert seconds.retry_after == 120

    date = email.utils.format_datetime(clock.now() + timedelta(seconds=300), usegmt=True)
    dated = await client.post(
        main.url(f"/status/429?retry_after={date.replace(' ', '%20')}"), BODY, HEADERS
    )
    assert dated.status == 429
    assert dated.retry_after == 300

    capped = await client.post(main.url("/status/503?retry_after=999999999999"), BODY, HEADERS)
    assert capped.retry_after == 3600

    past = email.utils.format_datetime(clock.now() - timedelta(days=1), usegmt=True)
    in_the_past = await client.post(
        main.url(f"/status/503?retry_after={past.replace(' ', '%20')}"), BODY, HEADERS
    )
    assert in_the_past.retry_after == 0

    junk = await client.post(main.url("/status/503?retry_after=soon"), BODY, HEADERS)
    assert junk.retry_after is None
    absent = await client.post(main.url("/status/503"), BODY, HEADERS)
    assert absent.retry_after is None


async def test_hanging_receiver_times_out_without_blocking_others(
    receivers, resolver, connector
) -> None:
    main, _ = receivers
    timeout = 3.0
    client = _client(resolver, connector, timeout_seconds=timeout)
    hanging = asyncio.create_task(client.post(main.url("/hang"), BODY, HEADERS))
    # Another endpoint's attempt, started while the first one hangs, is answered meanwhile.
    other = await client.post(main.url("/status/200"), BODY, HEADERS)
    assert other.succeeded
    assert not hanging.done()
    result = await hanging
    assert result.error == "timeout"
    assert result.status == 0
    assert len(main.hits) == 2
    assert timeout - EARLY <= result.elapsed < timeout + SLACK


async def test_stall_mid_body_times_out_with_the_status_kept(
    receivers, resolver, connector
) -> None:
    main, _ = receivers
    client = _client(resolver, connector, timeout_seconds=SHORT_TIMEOUT)
    result = await client.post(main.url("/hang-mid-body"), BODY, HEADERS)
    assert result.error == "timeout"
    assert result.status == 200
    assert result.body == b"partial"
    assert not result.succeeded
    assert SHORT_TIMEOUT - EARLY <= result.elapsed < SHORT_TIMEOUT + SLACK


async def test_gigabyte_body_is_cut_at_the_bound(receivers, resolver, connector) -> None:
    main, _ = receivers
    client = _client(resolver, connector, max_body_bytes=64 * 1024)
    result = await client.post(main.url("/huge"), BODY, HEADERS)
    assert result.status == 200
    assert result.error is None
    assert result.succeeded
    assert result.body_truncated
    assert len(result.body) == 64 * 1024
    # We hung up: the receiver's writes failed long before its gigabyte went out.
    async with asyncio.timeout(10):
        await main.huge_done.wait()
    assert main.huge_bytes_written < 64 * 1024 * 1024


async def test_body_within_the_bound_is_not_truncated(receivers, resolver, connector) -> None:
    main, _ = receivers
    result = await _client(resolver, connector, max_body_bytes=6).post(
        main.url("/status/200"), BODY, HEADERS
    )
    assert result.body == b"answer"
    assert not result.body_truncated


@pytest.mark.parametrize(
    ("answer", "close", "status", "error"),
    [
        # Closes mid-body: the 200 head arrived, the body did not; the attempt fails.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc", True, 200, "connection_closed"),
        # Closes mid-chunked-body.
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            True,
            200,
            "connection_closed",
        ),
        # Closes in the middle of the status line, and without a word.
        (b"HTTP/1.1 20", True, 0, "connection_closed"),
        (b"", True, 0, "connection_closed"),
        # Not HTTP at all.
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", True, 0, "invalid_response"),
        # An endless head: too many header fields, or one line far over the bound.
        (
            b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Pad-%d: a\r\n" % i for i in range(500)),
            False,
            0,
            "response_too_large",
        ),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\n", False, 0, "response_too_large"),
        # Part of the status line, then silence: the deadline ends it.
        (b"HTTP/1.1 2", False, 0, "timeout"),
        # A complete 2xx with its body, then the connection stays open: that is a success.
        (b"HTTP/1.1 204 No Content\r\n\r\n", False, 204, None),
    ],
)
async def test_misbehaving_receivers_end_in_a_recorded_outcome(
    raw_receiver, resolver, connector, answer: bytes, close: bool, status: int, error: str | None
) -> None:
    port = await raw_receiver(answer, close)
    timeout = SHORT_TIMEOUT if error == "timeout" else LONG_TIMEOUT
    result = await _client(resolver, connector, timeout_seconds=timeout).post(
        f"http://127.0.0.1:{port}/hook", BODY, HEADERS
    )
    assert result.status == status
    assert result.error == error
    if error == "timeout":
        assert SHORT_TIMEOUT - EARLY <= result.elapsed < SHORT_TIMEOUT + SLACK


async def test_closed_port_is_connect_failed(resolver, connector) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens there now.
    result = await _client(resolver, connector).post(f"http://127.0.0.1:{port}/", BODY, HEADERS)
    assert result.error == "connect_failed"
    assert result.status == 0


async def test_ipv6_loopback_receiver(resolver, connector) -> None:
    try:
        server = await asyncio.start_server(
            lambda r, w: _answer_204(r, w), "::1", 0, family=socket.AF_INET6
        )
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    port = server.sockets[0].getsockname()[1]
    try:
        policy = AddressPolicy(allowed_networks=parse_allowed_networks('["::1/128"]'))
        result = await _client(resolver, connector, policy=policy).post(
            f"http://[::1]:{port}/hook", BODY, HEADERS
        )
        assert result.status == 204
        assert connector.dialled == [("::1", port)]
    finally:
        server.close()
        await server.wait_closed()


async def _answer_204(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
    finally:
        writer.close()


# -- refusals: nothing is dialled --------------------------------------------------------------

# One address per class of SECURITY.md 49 (test_addresses has the full table with reasons).
CLASSES = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "169.254.10.10",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "198.18.0.1",
    "192.0.2.1",
    "240.0.0.1",
    "::1",
    "::",
    "fc00::1",
    "fd00::1",
    "fe80::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
]


def _literal_url(address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}/hook"


@pytest.mark.parametrize("address", CLASSES)
async def test_every_class_is_refused_as_a_literal(resolver, connector, address: str) -> None:
    result = await _client(resolver, connector, policy=AddressPolicy()).post(
        _literal_url(address), BODY, HEADERS
    )
    assert result.error == "address_not_allowed"
    assert result.status == 0
    assert connector.dialled == []
    assert not resolver.calls


@pytest.mark.parametrize("address", CLASSES)
async def test_every_class_is_refused_behind_a_hostname(resolver, connector, address: str) -> None:
    resolver.add("victim.example.com", [address])
    client = _client(resolver, connector, policy=AddressPolicy())
    result = await client.post("https://victim.example.com/hook", BODY, HEADERS)
    assert result.error == "address_not_allowed"
    assert connector.dialled == []
    assert resolver.calls["victim.example.com"] == 1


async def test_hostname_resolving_to_loopback_is_refused_without_the_allowlist(
    receivers, resolver, connector
) -> None:
    main, _ = receivers
    resolver.add("local.example.com", ["127.0.0.1"])
    for url in (
        f"https://local.example.com:{main.port}/status/200",
        f"http://local.example.com:{main.port}/status/200",
    ):
        result = await _client(resolver, connector, policy=AddressPolicy()).post(url, BODY, HEADERS)
        assert result.error == "address_not_allowed"
    assert connector.dialled == []
    assert main.hits == []


async def test_one_forbidden_address_refuses_the_attempt(resolver, connector) -> None:
    resolver.add("split.example.com", ["93.184.215.14", "10.0.0.1"])
    result = await _client(resolver, connector, policy=AddressPolicy()).post(
        "https://split.example.com/", BODY, HEADERS
    )
    assert result.error == "address_not_allowed"
    assert connector.dialled == []


async def test_plain_http_to_a_public_address_is_refused(resolver, connector) -> None:
    resolver.add("public.example.com", ["93.184.215.14"])
    result = await _client(resolver, connector).post("http://public.example.com/", BODY, HEADERS)
    assert result.error == "address_not_allowed"
    assert connector.dialled == []


async def test_unresolvable_and_invalid_urls(resolver, connector) -> None:
    client = _client(resolver, connector)
    assert (await client.post("https://nowhere.example.com/", BODY, HEADERS)).error == (
        "dns_failed"
    )
    assert (await client.post("https://u:p@example.com/", BODY, HEADERS)).error == "invalid_url"
    assert (await client.post("ftp://example.com/", BODY, HEADERS)).error == "invalid_url"
    assert connector.dialled == []


# -- DNS rebinding: the connection goes to the address that was checked ---------------------


@pytest.mark.parametrize("rebound", ["127.0.0.1", "169.254.169.254"])
async def test_rebinding_between_check_and_connect_dials_the_checked_address(
    resolver, connector, rebound: str
) -> None:
    # The first lookup answers a public address, any later one an inside address: a client
    # that looked the name up again to connect would dial the second.
    resolver.add("rebind.example.com", ["93.184.215.14"], [rebound])
    result = await _client(resolver, connector, policy=AddressPolicy()).post(
        "https://rebind.example.com/hook", BODY, HEADERS
    )
    # The recorder was handed the checked public address (and refused it: network rule).
    assert connector.dialled == [("93.184.215.14", 443)]
    assert rebound not in {address for address, _ in connector.dialled}
    assert resolver.calls["rebind.example.com"] == 1
    assert result.error == "connect_failed"


async def test_rebinding_after_creation_is_caught_at_the_attempt(resolver, connector) -> None:
    resolver.add("rebind.example.com", ["93.184.215.14"], ["127.0.0.1"])
    await check_webhook_url(
        "https://rebind.example.com/hook", policy=AddressPolicy(), resolver=resolver
    )
    result = await _client(resolver, connector, policy=AddressPolicy()).post(
        "https://rebind.example.com/hook", BODY, HEADERS
    )
    assert result.error == "address_not_allowed"
    assert connector.dialled == []
    assert resolver.calls["rebind.example.com"] == 2


async def test_each_attempt_checks_afresh_and_stays_pinned(receivers, resolver, connector) -> None:
    main, _ = receivers
    # Allowlisted loopback first (a real delivery), then the metadata address.
    resolver.add("flip.example.com", ["127.0.0.1"], ["169.254.169.254"])
    client = _client(resolver, connector)
    url = main.url("/status/200", host="flip.example.com")
    first = await client.post(url, BODY, HEADERS)
    assert first.succeeded
    assert first.peer == "127.0.0.1"
    second = await client.post(url, BODY, HEADERS)
    assert second.error == "address_not_allowed"
    assert connector.dialled == [("127.0.0.1", main.port)]
    assert len(main.hits) == 1
    assert resolver.calls["flip.example.com"] == 2


async def test_every_socket_comes_from_the_connector(receivers, resolver) -> None:
    """The network rule's premise: with a connector that refuses every address, even an
    allowlisted live receiver gets nothing, so no other path to a socket exists."""
    main, _ = receivers

    class RefuseAll:
        def __init__(self) -> None:
            self.asked: list[tuple[str, int]] = []

        def open_socket(self, address, port, *, family, type, proto):
            self.asked.append((str(address), port))
            raise ConnectionRefusedError("refused by the test")

    refuse_all = RefuseAll()
    resolver.add("receiver.example.com", ["127.0.0.1"])
    for url in (main.url("/status/200"), main.url("/status/200", host="receiver.example.com")):
        result = await _client(resolver, refuse_all).post(url, BODY, HEADERS)
        assert result.error == "connect_failed"
    assert refuse_all.asked == [("127.0.0.1", main.port)] * 2
    assert main.hits == []


# -- TLS: connected to the pinned address, verified against the name ------------------------


def _self_signed(tmp_path, name: str):
    """A certificate for `name` (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
async def tls_receiver(tmp_path) -> AsyncIterator[tuple[int, list[str | None], object]]:
    cert_file, key_file = _self_signed(tmp_path, "receiver.example.com")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    server_names: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200, text=request.host)

    app = web.Application()
    app.router.add_post("/hook", ok)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client_context = ssl.create_default_context(cafile=str(cert_file))
    try:
        yield port, server_names, client_context
    finally:
        await runner.cleanup()


async def test_https_to_the_pinned_address_verifies_the_name(
    tls_receiver, resolver, connector
) -> None:
    port, server_names, client_context = tls_receiver
    resolver.add("receiver.example.com", ["127.0.0.1"])
    resolver.add("impostor.example.com", ["127.0.0.1"])
    client = _client(resolver, connector, ssl_context=client_context)

    result = await client.post(f"https://receiver.example.com:{port}/hook", BODY, HEADERS)
    assert result.succeeded
    assert result.body == f"receiver.example.com:{port}".encode()
    assert server_names == ["receiver.example.com"]
    assert connector.dialled == [("127.0.0.1", port)]

    # The same address under another name: the certificate does not match, so no delivery.
    wrong = await client.post(f"https://impostor.example.com:{port}/hook", BODY, HEADERS)
    assert wrong.error == "tls_failed"
    assert wrong.status == 0
    assert server_names[-1] == "impostor.example.com"


async def test_https_with_an_untrusted_certificate_fails(tls_receiver, resolver, connector) -> None:
    port, _, _ = tls_receiver
    resolver.add("receiver.example.com", ["127.0.0.1"])
    # The system's CAs (the default): our self-signed certificate is not among them.
    result = await _client(resolver, connector).post(
        f"https://receiver.example.com:{port}/hook", BODY, HEADERS
    )
    assert result.error == "tls_failed"


# -- the real resolver, on numeric hosts only (getaddrinfo parses them; no DNS query) --------


async def test_system_resolver_answers_numeric_hosts_without_a_lookup() -> None:
    resolver = SystemResolver(threads=1)
    try:
        assert [str(a) for a in await resolver.resolve("127.0.0.1", 80)] == ["127.0.0.1"]
        assert [str(a) for a in await resolver.resolve("::1", 443)] == ["::1"]
    finally:
        resolver.close()
    # Once closed (the service stopping), a lookup is a failure to record, not a crash.
    with pytest.raises(ResolutionFailed):
        await resolver.resolve("127.0.0.1", 80)


async def test_real_resolver_and_connector_deliver_to_a_local_literal(receivers) -> None:
    """The production wiring (SystemResolver, SocketConnector) against a loopback literal:
    the literal is never handed to the resolver, and the socket goes to 127.0.0.1 only."""
    main, _ = receivers
    resolver = SystemResolver()
    try:
        client = DeliveryClient(policy=LOCAL, resolver=resolver, timeout_seconds=LONG_TIMEOUT)
        result = await client.post(main.url("/status/200"), BODY, HEADERS)
        assert result.succeeded
        assert result.peer == "127.0.0.1"
        refused = await DeliveryClient(policy=AddressPolicy(), resolver=resolver).post(
            main.url("/status/200"), BODY, HEADERS
        )
        assert refused.error == "address_not_allowed"
        assert len(main.hits) == 1
    finally:
        resolver.close()
