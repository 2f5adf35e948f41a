"""/metrics serves Prometheus text with per-RPC and domain series."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from palisade_api.crypto.v1 import crypto_pb2 as pb

pytestmark = pytest.mark.postgres


def _scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


async def test_metrics_parse_and_count_rpcs_by_code(crypto) -> None:
    request = pb.EncryptRequest(
        items=[pb.EncryptItem(plaintext=b"secret-value", associated_data=b"visitors/a")]
    )
    await crypto.stub.Encrypt(request, metadata=crypto.metadata())
    with pytest.raises(grpc.aio.AioRpcError):
        await crypto.stub.Encrypt(request)  # no assertion

    families = await asyncio.to_thread(_scrape, crypto.server.running.metrics_port)
    handled = {
        (s.labels["grpc_method"], s.labels["grpc_code"]): s.value
        for s in families["grpc_server_handled"]
        if s.name == "grpc_server_handled_total"
    }
    assert handled[("Encrypt", "OK")] == 1
    assert handled[("Encrypt", "UNAUTHENTICATED")] == 1
    assert any(
        s.name == "grpc_server_handling_seconds_bucket"
        for s in families["grpc_server_handling_seconds"]
    )
    items = {
        (s.labels["operation"], s.labels["outcome"]): s.value
        for s in families["palisade_crypto_items"]
        if s.name.endswith("_total")
    }
    assert items[("encrypt", "ok")] == 1
    text = str(families)
    assert "secret-value" not in text
