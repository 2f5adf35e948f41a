"""P6: encrypt 1,000 fields in one batched call to the crypto service vs the same in-process.

Target (shared/PERFORMANCE.md): the service reaches >= 0.5 of in-process throughput. Both sides
are measured in this one run; the service is a separate process, as in production.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from bench.common import best_rate, print_table, service_process
from palisade.common.aad import associated_data
from palisade.common.caller import AssertionSigner
from palisade.common.clock import SystemClock
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade.crypto.keyring_file import KeyringHolder, create_keyring
from palisade.crypto.metrics import CryptoMetrics
from palisade.crypto.service import CryptoService, Limits
from palisade.crypto.store import MemoryUsageStore
from palisade.crypto.usage import UsageTracker
from palisade_api.crypto.v1 import crypto_pb2 as pb
from palisade_api.crypto.v1 import crypto_pb2_grpc

FIELDS = 1000
CALLS_PER_TRIAL = 50


ENCRYPT = "/palisade.crypto.v1.CryptoService/Encrypt"


def _fields() -> list[tuple[bytes, bytes]]:
    return [
        (f"visitor{i}@example.com".encode(), associated_data("auth", "ws", str(i), "email"))
        for i in range(FIELDS)
    ]


def _in_process(data_dir: Path) -> tuple[float, float]:
    path = data_dir / "bench-keyring.json"
    create_keyring(path, SystemClock())
    service = CryptoService(
        keyring=KeyringHolder(path, on_reload=lambda *_: None),
        usage=UsageTracker(
            store=MemoryUsageStore(),
            warn_threshold=2**30,
            rotate_threshold=2**31,
            hard_limit=3 * 2**30,
            lease_size=16384,
        ),
        limits=Limits(max_items=FIELDS, max_item_bytes=65536),
        metrics=CryptoMetrics(CollectorRegistry()),
        clock=SystemClock(),
        auto_rotate=False,
    )
    items = _fields()

    async def calls() -> None:
        for _ in range(CALLS_PER_TRIAL):
            await service.encrypt(items)

    def trial() -> float:
        start = time.perf_counter()
        asyncio.run(calls())
        return CALLS_PER_TRIAL * FIELDS / (time.perf_counter() - start)

    return best_rate(trial)


async def _through_service(port: int, data_dir: Path, in_flight: int) -> tuple[float, float]:
    """Fields/s with `in_flight` callers each making CALLS_PER_TRIAL sequential calls."""
    # Calls as auth does (crypto checks that the data's first AAD part names the caller), with
    # auth's share of the master the crypto process created on its first run.
    keys = KeySource.from_master(read_document(data_dir / "keys" / "edges.json"), "auth")
    identity = ServiceIdentity(
        name="auth", signer=AssertionSigner(keys=keys, clock=SystemClock(), ttl_seconds=60)
    )
    request = pb.EncryptRequest(
        items=[pb.EncryptItem(plaintext=p, associated_data=a) for p, a in _fields()]
    )
    async with insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = crypto_pb2_grpc.CryptoServiceStub(channel)

        async def caller() -> None:
            for _ in range(CALLS_PER_TRIAL):
                await stub.Encrypt(request, metadata=identity.metadata("crypto", ENCRYPT))

        await stub.Encrypt(request, metadata=identity.metadata("crypto", ENCRYPT))  # warm-up
        rates = []
        for _ in range(5):
            start = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(in_flight)))
            rates.append(in_flight * CALLS_PER_TRIAL * FIELDS / (time.perf_counter() - start))
    return max(rates), statistics.median(rates)


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        local_best, local_median = _in_process(data_dir)
        with service_process("palisade.crypto", "PALISADE_CRYPTO_", data_dir) as port:
            one = asyncio.run(_through_service(port, data_dir, in_flight=1))
            four = asyncio.run(_through_service(port, data_dir, in_flight=4))
    print_table(
        f"P6  encrypt {FIELDS} fields per call ({CALLS_PER_TRIAL} calls x 5 trials; median, best)",
        [
            ("in-process fields/s", f"{local_median:,.0f}  {local_best:,.0f}"),
            ("service, 1 call in flight, fields/s", f"{one[1]:,.0f}  {one[0]:,.0f}"),
            ("service, 4 calls in flight, fields/s", f"{four[1]:,.0f}  {four[0]:,.0f}"),
            ("ratio, 1 in flight / in-process", f"{one[1] / local_median:.2f}"),
            ("ratio, 4 in flight / in-process", f"{four[1] / local_median:.2f}   target >= 0.50"),
        ],
    )
    return {"p6_ratio_1": one[1] / local_median, "p6_ratio_4": four[1] / local_median}


if __name__ == "__main__":
    main()
