"""What service test harnesses share: a refused call's stable code, and an embedded crypto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from palisade.crypto.config import CryptoSettings


def code_of(error: grpc.aio.AioRpcError) -> str | None:
    """The stable error code a Palisade service puts in the trailing metadata."""
    for key, value in error.trailing_metadata() or ():
        if key == "palisade-error-code":
            return str(value)
    return None


async def refused(call: Any, status: grpc.StatusCode, code: str) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with this status and stable code; the error, for more."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == status, caught.value
    assert code_of(caught.value) == code, caught.value
    return caught.value


def embedded_crypto_settings(tmp_path: Path) -> CryptoSettings:
    """A crypto service on SQLite in tmp_path, on ports of its own choosing."""
    return CryptoSettings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'crypto.db'}",
        grpc_port=0,
        metrics_port=0,
        keyring_reload_seconds=0.05,
        usage_sync_seconds=3600,
        shutdown_grace_seconds=1,
    )
