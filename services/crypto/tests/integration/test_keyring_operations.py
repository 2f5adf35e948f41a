"""The keyring on disk: 0600 on creation, and CLI changes reach a running server, no restart."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import sys
import time

import pytest

from palisade.common.aad import associated_data
from palisade_api.crypto.v1 import crypto_pb2 as pb

pytestmark = pytest.mark.postgres

AAD = associated_data("visitors", "ws_1", "v_1", "name")


def _cli(crypto, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PALISADE_DATA_DIR": str(crypto.settings.data_dir),
        "PALISADE_CRYPTO_DATABASE_URL": str(crypto.settings.database_url),
    }
    return subprocess.run(
        [sys.executable, "-m", "palisade.crypto", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


async def _wait_for(predicate, limit_seconds: float = 10.0) -> None:
    """Polls a running server's state (the reload happens in another task, on its own timer)."""
    deadline = time.monotonic() + limit_seconds
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def _primary(crypto) -> int:
    status = await crypto.stub.KeyStatus(pb.KeyStatusRequest(), metadata=crypto.metadata())
    return next(k.version for k in status.data_keys if k.primary)


async def test_key_files_are_private(crypto) -> None:
    for path in (
        crypto.settings.resolved_keyring_file(),
        crypto.settings.resolved_internal_keys_file("crypto"),
        crypto.settings.resolved_edge_keys_master_file(),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


async def test_cli_rotation_is_picked_up_without_restart(crypto) -> None:
    before = await crypto.stub.Encrypt(
        pb.EncryptRequest(items=[pb.EncryptItem(plaintext=b"Ada", associated_data=AAD)]),
        metadata=crypto.metadata(),
    )
    assert before.key_version == 1

    out = await asyncio.to_thread(_cli, crypto, "keys", "rotate")
    assert "v2 is now primary" in out.stdout

    async def rotated() -> bool:
        return await _primary(crypto) == 2

    await _wait_for(rotated)
    after = await crypto.stub.Encrypt(
        pb.EncryptRequest(items=[pb.EncryptItem(plaintext=b"Ada", associated_data=AAD)]),
        metadata=crypto.metadata(),
    )
    assert after.key_version == 2
    old = await crypto.stub.Decrypt(
        pb.DecryptRequest(
            items=[pb.DecryptItem(ciphertext=before.ciphertexts[0], associated_data=AAD)]
        ),
        metadata=crypto.metadata(),
    )
    assert old.plaintexts == [b"Ada"]
    assert stat.S_IMODE(crypto.settings.resolved_keyring_file().stat().st_mode) == 0o600


async def test_cli_status_shows_counts_and_no_key_material(crypto) -> None:
    await crypto.stub.Encrypt(
        pb.EncryptRequest(items=[pb.EncryptItem(plaintext=b"x", associated_data=AAD)] * 4),
        metadata=crypto.metadata(),
    )
    await crypto.server.service.sync_usage()
    out = (await asyncio.to_thread(_cli, crypto, "keys", "status")).stdout
    assert "v1" in out
    assert "encryptions=4" in out
    doc = json.loads(crypto.settings.resolved_keyring_file().read_bytes())
    for section in ("data", "index"):
        for entry in doc[section]["keys"].values():
            assert entry["key"] not in out
            assert base64.b64decode(entry["key"]).hex() not in out


async def test_cli_retire_is_picked_up(crypto) -> None:
    old = await crypto.stub.Encrypt(
        pb.EncryptRequest(items=[pb.EncryptItem(plaintext=b"x", associated_data=AAD)]),
        metadata=crypto.metadata(),
    )
    await asyncio.to_thread(_cli, crypto, "keys", "rotate")
    await asyncio.to_thread(_cli, crypto, "keys", "retire", "--below", "2")

    async def retired() -> bool:
        status = await crypto.stub.KeyStatus(pb.KeyStatusRequest(), metadata=crypto.metadata())
        return status.min_data_version == 2

    await _wait_for(retired)
    import grpc

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await crypto.stub.Decrypt(
            pb.DecryptRequest(
                items=[pb.DecryptItem(ciphertext=old.ciphertexts[0], associated_data=AAD)]
            ),
            metadata=crypto.metadata(),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_retiring_the_primary_is_refused(crypto) -> None:
    with pytest.raises(subprocess.CalledProcessError) as caught:
        await asyncio.to_thread(_cli, crypto, "keys", "retire", "--below", "5")
    assert "cannot retire the primary" in caught.value.stderr
    assert await _primary(crypto) == 1


async def test_kubernetes_secret_update_is_picked_up(crypto_factory, tmp_path) -> None:
    """The kubelet updates a mounted Secret by swapping a `..data` symlink to a new directory."""
    from palisade.common.clock import SystemClock
    from palisade.crypto.keyring_file import create_keyring, update_keyring

    mount = tmp_path / "secret-mount"
    first = mount / "..2026_01_01_00_00_00.000000001"
    first.mkdir(parents=True)
    create_keyring(first / "keyring.json", SystemClock())
    (mount / "..data").symlink_to(first.name)
    (mount / "keyring.json").symlink_to("..data/keyring.json")

    async with crypto_factory(keyring_file=mount / "keyring.json") as crypto:
        assert await _primary(crypto) == 1
        # The operator rotates a copy and applies it; the kubelet writes a new timestamped
        # directory and atomically repoints ..data at it.
        second = mount / "..2026_01_02_00_00_00.000000002"
        second.mkdir()
        (second / "keyring.json").write_bytes((first / "keyring.json").read_bytes())
        update_keyring(
            second / "keyring.json",
            lambda k: type(k)(data=k.data.rotated(SystemClock().now()), index=k.index),
        )
        (mount / "..data_tmp").symlink_to(second.name)
        os.replace(mount / "..data_tmp", mount / "..data")

        async def rotated() -> bool:
            return await _primary(crypto) == 2

        await _wait_for(rotated)


async def test_invalid_keyring_update_keeps_serving_with_the_old_keys(crypto) -> None:
    path = crypto.settings.resolved_keyring_file()
    good = path.read_bytes()
    path.write_bytes(b'{"format": 1, "data": "oops"}')
    # Reload now instead of waiting for the watcher (which may also get there first: either
    # way the bad file must be ignored).
    assert crypto.server.keyring.reload_if_changed() is False
    assert crypto.server.keyring.current.data.primary == 1
    reply = await crypto.stub.Encrypt(
        pb.EncryptRequest(items=[pb.EncryptItem(plaintext=b"x", associated_data=AAD)]),
        metadata=crypto.metadata(),
    )
    assert reply.key_version == 1
    path.write_bytes(good)
