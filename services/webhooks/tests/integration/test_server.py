"""The composition root with its background tasks on: a test event sent through the API
reaches a local receiver, signed so that the standardwebhooks package verifies it, and the
server stops promptly with the worker running and audit and auth away."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from palisade_api.webhooks.v1 import webhooks_pb2 as pb


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, asyncio.Queue[tuple[bytes, dict[str, str]]]]]:
    got: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()

    async def handle(request: web.Request) -> web.Response:
        await got.put((await request.read(), dict(request.headers)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", got
    finally:
        await runner.cleanup()


async def test_a_test_event_arrives_signed(
    webhooks_factory: Any, sqlite_url: str, receiver: Any
) -> None:
    url, got = receiver
    ws = f"ws_{secrets.token_hex(16)}"
    async with webhooks_factory(
        sqlite_url,
        run_background=True,
        allowed_networks=("127.0.0.0/8",),
        worker_poll_seconds=0.05,
        stream_retry_seconds=60,
    ) as harness:
        created = await harness.create(ws, url=url, event_types=("webhook.test",))
        sent = await harness.stub.SendTestEvent(
            pb.SendTestEventRequest(id=created.webhook.id), metadata=harness.person(ws)
        )
        body, headers = await asyncio.wait_for(got.get(), timeout=20)
        assert headers["webhook-id"] == sent.event_id
        verified = Webhook(created.secret).verify(body, headers)
        assert verified["type"] == "webhook.test"
        assert verified["data"]["webhookId"] == created.webhook.id
        began = time.monotonic()
    assert time.monotonic() - began < 10  # stopped with the worker running
