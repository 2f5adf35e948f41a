"""Usage limits through the real server: warn, rotate automatically, refuse past the limit."""

from __future__ import annotations

import grpc
import pytest

from palisade_api.crypto.v1 import crypto_pb2 as pb

pytestmark = pytest.mark.postgres

THRESHOLDS = {"usage_warn_threshold": 3, "usage_rotate_threshold": 5, "usage_hard_limit": 8}


def _request(count: int) -> pb.EncryptRequest:
    return pb.EncryptRequest(
        items=[pb.EncryptItem(plaintext=b"x", associated_data=b"visitors/a")] * count
    )


def _sample(crypto, name: str, labels: dict[str, str] | None = None) -> float | None:
    return crypto.server.registry.get_sample_value(name, labels or {})


async def test_primary_rotates_automatically_at_the_threshold(crypto_factory) -> None:
    async with crypto_factory(**THRESHOLDS) as crypto:
        first = await crypto.stub.Encrypt(_request(3), metadata=crypto.metadata())
        await crypto.server.service.sync_usage()
        assert _sample(crypto, "palisade_crypto_key_usage_warning") == 1
        assert _sample(crypto, "palisade_crypto_auto_rotations_total") == 0

        await crypto.stub.Encrypt(_request(2), metadata=crypto.metadata())
        await crypto.server.service.sync_usage()
        assert _sample(crypto, "palisade_crypto_auto_rotations_total") == 1
        assert _sample(crypto, "palisade_crypto_primary_key_version") == 2

        after = await crypto.stub.Encrypt(_request(1), metadata=crypto.metadata())
        assert after.key_version == 2
        old = await crypto.stub.Decrypt(
            pb.DecryptRequest(
                items=[
                    pb.DecryptItem(ciphertext=first.ciphertexts[0], associated_data=b"visitors/a")
                ]
            ),
            metadata=crypto.metadata(),
        )
        assert old.plaintexts == [b"x"]
        # The rotation was written to the keyring file, so it survives a restart.
        status = await crypto.stub.KeyStatus(pb.KeyStatusRequest(), metadata=crypto.metadata())
        assert [(k.version, k.primary, k.encryptions) for k in status.data_keys] == [
            (1, False, 5),
            (2, True, 1),
        ]


async def test_encryption_fails_closed_past_the_hard_limit(crypto_factory) -> None:
    async with crypto_factory(**THRESHOLDS, auto_rotate=False) as crypto:
        await crypto.stub.Encrypt(_request(8), metadata=crypto.metadata())
        await crypto.server.service.sync_usage()  # no rotation: auto_rotate is off
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await crypto.stub.Encrypt(_request(1), metadata=crypto.metadata())
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # An operator rotation (here through the keyring file) lifts the block.
        crypto.server.keyring.update(
            lambda k: type(k)(data=k.data.rotated(crypto.clock.now()), index=k.index)
        )
        reply = await crypto.stub.Encrypt(_request(1), metadata=crypto.metadata())
        assert reply.key_version == 2


async def test_ledger_outage_fails_closed_once_the_lease_is_spent(crypto_factory) -> None:
    """With the database gone, a replica spends what it leased, then refuses (503-style)."""
    async with crypto_factory(usage_lease_size=4) as crypto:
        await crypto.stub.Encrypt(_request(1), metadata=crypto.metadata())  # leases 4
        await crypto.server.service.sync_usage()

        class DownStore:
            async def lease(self, version, count):
                raise ConnectionError("database is down")

            async def totals(self):
                raise ConnectionError("database is down")

        crypto.server.service._usage._store = DownStore()  # the ledger becomes unreachable
        await crypto.stub.Encrypt(_request(3), metadata=crypto.metadata())  # already leased
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await crypto.stub.Encrypt(_request(1), metadata=crypto.metadata())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_restarts_cannot_pass_the_hard_limit(crypto_factory) -> None:
    """Leases already count what a replica had not spent yet when it stopped."""
    for _ in range(2):
        async with crypto_factory(**THRESHOLDS, auto_rotate=False, usage_lease_size=6) as crypto:
            await crypto.stub.Encrypt(_request(1), metadata=crypto.metadata())
    async with crypto_factory(**THRESHOLDS, auto_rotate=False, usage_lease_size=6) as crypto:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await crypto.stub.Encrypt(_request(1), metadata=crypto.metadata())
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
