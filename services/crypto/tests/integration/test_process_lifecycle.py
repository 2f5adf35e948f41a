"""The service as an operator runs it: its own process, JSON logs, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ports import port_for_later
from sqlalchemy.engine import make_url

from palisade.common.aad import associated_data
from palisade.common.caller import AssertionSigner
from palisade.common.clock import SystemClock
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade.common.logs import request_id_var
from palisade_api.crypto.v1 import crypto_pb2 as pb
from palisade_api.crypto.v1 import crypto_pb2_grpc

pytestmark = pytest.mark.postgres

_CRYPTO = "/palisade.crypto.v1.CryptoService"


def _free_port() -> int:
    """A port for a server started later: below the ephemeral range, so no client
    connection takes it first (ports.port_for_later)."""
    return port_for_later()


async def _wait_serving(port: int, process: asyncio.subprocess.Process) -> None:
    async with insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            assert process.returncode is None, "the service exited while starting"
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("service never became healthy")


async def test_sigterm_drains_and_exits_cleanly_with_counts_already_leased(
    tmp_path: Path, postgres_url: str
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "PALISADE_DATA_DIR": str(tmp_path),
        "PALISADE_CRYPTO_DATABASE_URL": postgres_url,
        "PALISADE_CRYPTO_GRPC_PORT": str(port),
        "PALISADE_CRYPTO_METRICS_PORT": "0",
        "PALISADE_CRYPTO_USAGE_SYNC_SECONDS": "3600",
        "PALISADE_CRYPTO_USAGE_LEASE_SIZE": "5",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "palisade.crypto",
        "serve",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        await _wait_serving(port, process)
        # Auth's share of the master the crypto process created on its first run.
        keys = KeySource.from_master(read_document(tmp_path / "keys" / "edges.json"), "auth")
        identity = ServiceIdentity(
            name="auth", signer=AssertionSigner(keys=keys, clock=SystemClock(), ttl_seconds=60)
        )
        secret = b"very-private-value@example.com"
        async with insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = crypto_pb2_grpc.CryptoServiceStub(channel)
            request = pb.EncryptRequest(
                items=[
                    pb.EncryptItem(plaintext=secret, associated_data=associated_data("auth", "1"))
                ]
                * 7
            )
            # As inside a service handling a request: the request id follows the call.
            token = request_id_var.set("req-lifecycle-1")
            try:
                metadata = identity.metadata("crypto", f"{_CRYPTO}/Encrypt")
                decrypt_metadata = identity.metadata("crypto", f"{_CRYPTO}/Decrypt")
            finally:
                request_id_var.reset(token)
            await stub.Encrypt(request, metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Decrypt(
                    pb.DecryptRequest(
                        items=[
                            pb.DecryptItem(
                                ciphertext=b"x" * 40, associated_data=associated_data("auth", "a")
                            )
                        ]
                    ),
                    metadata=decrypt_metadata,
                )
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    assert process.returncode == 0

    # The 7 encryptions were leased from the ledger before they were made (one lease of 7,
    # as the batch exceeded the lease size), so no shutdown step is needed to keep them.
    admin = make_url(postgres_url).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False)) as conn:
        rows = conn.execute("SELECT key_version, encryptions FROM key_usage").fetchall()
    assert rows == [(1, 7)]

    # Every log line is JSON; the failed call is logged with the caller's request id;
    # nothing secret is written.
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.strip()]
    assert lines, "the service logged nothing"
    assert all(line["service"] == "crypto" for line in lines)
    failed = [line for line in lines if line.get("msg") == "rpc failed"]
    assert failed
    assert failed[0]["request_id"] == "req-lifecycle-1"
    assert failed[0]["code"] == "INVALID_ARGUMENT"
    assert secret.decode() not in stderr.decode()
    keyring = (tmp_path / "keys" / "keyring.json").read_text()
    for entry in json.loads(keyring)["data"]["keys"].values():
        assert entry["key"] not in stderr.decode()
