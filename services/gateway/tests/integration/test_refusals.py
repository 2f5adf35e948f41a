"""What the gateway answers when a backend call fails: problem+json, nothing leaked."""

from __future__ import annotations

import json
import logging

import grpc

from .conftest import TOKEN, rpc_error


async def test_an_unexpected_failure_is_a_generic_500_and_is_logged(gateway, caplog) -> None:
    gateway.auth.allow(TOKEN)
    gateway.upstream.fail_with = RuntimeError("internal detail: db password hunter2")
    with caplog.at_level(logging.ERROR):
        status, headers, body = await gateway.call("GET", "/v1/me", token=TOKEN)
    assert status == 500
    assert headers["Content-Type"].startswith("application/problem+json")
    assert json.loads(body)["code"] == "internal"
    assert b"hunter2" not in body
    [record] = [r for r in caplog.records if r.name == "palisade.gateway"]
    assert record.exc_info is not None  # the traceback goes to the log, not to the client
    assert headers["X-Request-Id"]


async def test_backend_statuses_map_to_problems(gateway) -> None:
    gateway.auth.allow(TOKEN)
    gateway.upstream.fail_with = rpc_error(grpc.StatusCode.UNAVAILABLE, "unavailable")
    status, _, body = await gateway.call("GET", "/v1/me", token=TOKEN)
    assert (status, json.loads(body)["code"]) == (503, "unavailable")
    gateway.upstream.fail_with = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED, "recent_auth_required"
    )
    status, _, body = await gateway.call("DELETE", "/v1/me/totp", token=TOKEN)
    assert (status, json.loads(body)["code"]) == (403, "recent_auth_required")


async def test_odd_request_targets_still_get_problem_json(gateway) -> None:
    """Every answer goes through the frame: none of aiohttp's text/plain refusals."""
    import asyncio

    for target in ("/v1/me/sessions/a%0Ab", "/%0A", "//x", "/%ZZ", "http://x/v1/none", "*"):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head = answer.partition(b"\r\n\r\n")[0].lower()
        assert b"content-type: application/problem+json" in head, (target, head)
        assert b"server: palisade" in head, target


async def test_an_unknown_expectation_is_a_problem_without_echo(gateway) -> None:
    import asyncio

    async def send(expect: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(
            b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n"
            + f"Expect: {expect}\r\n\r\n".encode()
        )
        await writer.drain()
        return reader, writer

    reader, writer = await send("x-<script>")
    # Read by Content-Length: aiohttp lingers on the connection for the unsent body.
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    answer = head + await asyncio.wait_for(reader.readexactly(length), 10)
    writer.close()
    assert b" 417 " in answer.split(b"\r\n", 1)[0], answer[:200]
    assert b"application/problem+json" in answer
    assert b"<script>" not in answer
    # The one expectation HTTP/1.1 defines still works: 100 Continue, then the real answer.
    reader, writer = await send("100-continue")
    assert b" 100 " in await asyncio.wait_for(reader.readline(), 10)
    writer.write(b"{}")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert b"HTTP/1.1 200 OK" in answer  # forwarded (the spy answers every call)
    assert gateway.upstream.calls[-1][0] == "/palisade.auth.v1.AuthService/Login"
