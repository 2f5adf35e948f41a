"""palisade-apikeys keys list / keys revoke / limits show, against the service's database."""

from __future__ import annotations

import asyncio
import io
import json

import grpc

from palisade.apikeys.cli import main
from palisade.common.api_key_format import lookup_hash
from palisade_api.apikeys.v1 import apikeys_pb2 as pb


def _run(keys, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), settings=keys.settings, out=out, clock=keys.clock)
    return code, out.getvalue()


async def test_keys_list_shows_prefix_and_last4_only(keys) -> None:
    created = await keys.create(name="Ops")
    await keys.create(metadata=keys.person("usr_bob", "wsp_b"))
    code, output = await asyncio.to_thread(_run, keys, "keys", "list", "--workspace", "wsp_a")
    assert code == 0
    [line] = output.splitlines()
    row = json.loads(line)
    assert (row["id"], row["name"], row["state"]) == (created.api_key.id, "Ops", "active")
    assert row["prefix"] == created.key[:12]
    assert row["last4"] == created.key[-4:]
    assert created.key not in output


async def test_keys_revoke_reaches_the_gateways(keys_sqlite) -> None:
    keys = keys_sqlite
    created = await keys.create()
    stream = keys.stub.WatchRevocations(pb.WatchKeyRevocationsRequest(), metadata=keys.gateway())
    await asyncio.wait_for(stream.initial_metadata(), timeout=5)
    code, output = await asyncio.to_thread(_run, keys, "keys", "revoke", created.api_key.id)
    assert (code, output.strip()) == (0, f"revoked {created.api_key.id}")
    await keys.refused(
        keys.stub.VerifyApiKey(
            pb.VerifyApiKeyRequest(key_hash=lookup_hash(created.key)), metadata=keys.gateway()
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_api_key",
    )
    # The running service's relay publishes the CLI's outbox row at its next pass.
    while True:
        event = await asyncio.wait_for(stream.read(), timeout=5)
        if not event.heartbeat:
            break
    assert list(event.key_ids) == [created.api_key.id]
    assert event.reason == "operator"
    stream.cancel()
    code, output = await asyncio.to_thread(_run, keys, "keys", "revoke", created.api_key.id)
    assert (code, output.strip()) == (0, f"already revoked {created.api_key.id}")
    code, output = await asyncio.to_thread(_run, keys, "keys", "revoke", "key_nope")
    assert code == 1
    history = await keys.stub.ListApiKeyEvents(
        pb.ListApiKeyEventsRequest(id=created.api_key.id), metadata=keys.person()
    )
    assert next((e.type, e.actor) for e in history.events) == ("revoked", "system")


async def test_limits_show(keys_sqlite) -> None:
    code, output = _run(keys_sqlite, "limits", "show")
    assert code == 0
    assert json.loads(output)["default_rate_limit"] == {"requests_per_minute": 600, "burst": 100}
