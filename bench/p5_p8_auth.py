"""P5 (password logins vs cores / Argon2id CPU time; validation latency while logins saturate
the CPU) and P8 (50 concurrent refreshes of one token), against real crypto and auth
processes on Postgres and Redis.

P5 targets: logins/s >= 0.85 x (cores / CPU seconds of one hash); token validation p99 stays
under 20 ms meanwhile (hashing never blocks the event loop). Until the gateway exists, the
validation path measured is auth's ValidateAccessToken (a database read), a stricter stand-in
for the gateway's cached validation.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from argon2 import PasswordHasher as Argon2Hasher
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import (
    REDIS_URL,
    crypto_and_auth,
    hashing_only_rate,
    percentile,
    print_table,
)
from palisade.auth.config import AuthSettings
from palisade.common.caller import AssertionSigner
from palisade.common.clock import SystemClock
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.grpc_client import insecure_channel
from palisade_api.auth.v1 import auth_pb2 as pb
from palisade_api.auth.v1 import auth_pb2_grpc

LOGINS = 120
LOGIN_CONCURRENCY = 8
PASSWORD = "correct horse battery staple"


def _hash_cpu_seconds(settings: AuthSettings) -> float:
    hasher = Argon2Hasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
    )
    stored = hasher.hash(PASSWORD)
    start = time.process_time()
    for _ in range(20):
        hasher.verify(stored, PASSWORD)
    return (time.process_time() - start) / 20


class Gateway:
    """Signs what the gateway would sign, for the benchmark's calls (one assertion per call)."""

    def __init__(self, data_dir: Path) -> None:
        # The gateway's share of the master the services created on their first run.
        keys = KeySource.from_master(read_document(data_dir / "keys" / "edges.json"), "gateway")
        self._signer = AssertionSigner(keys=keys, clock=SystemClock(), ttl_seconds=60)

    def anonymous(self, method: str) -> tuple[tuple[str, str], ...]:
        token = self._signer.sign(
            audience="auth",
            method=f"/palisade.auth.v1.AuthService/{method}",
            principal="anonymous",
            request_id=uuid.uuid4().hex,
            client_ip="127.0.0.1",
        )
        return (("x-palisade-caller", token),)

    def service(self, method: str) -> tuple[tuple[str, str], ...]:
        token = self._signer.sign(
            audience="auth",
            method=f"/palisade.auth.v1.AuthService/{method}",
            principal="service:gateway",
            request_id=uuid.uuid4().hex,
        )
        return (("x-palisade-caller", token),)


async def _p5(
    stub: auth_pb2_grpc.AuthServiceStub, health: health_pb2_grpc.HealthStub, gateway: Gateway
) -> dict[str, float]:
    emails = [f"bench{i}@example.com" for i in range(LOGIN_CONCURRENCY)]
    for email in emails:
        await stub.SignUp(
            pb.SignUpRequest(email=email, password=PASSWORD, name="Bench"),
            metadata=gateway.anonymous("SignUp"),
        )
    token = (
        await stub.Login(
            pb.LoginRequest(email=emails[0], password=PASSWORD), metadata=gateway.anonymous("Login")
        )
    ).access_token
    latencies: list[float] = []
    loop_latencies: list[float] = []
    done = asyncio.Event()

    async def validator() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await stub.ValidateAccessToken(
                pb.ValidateAccessTokenRequest(access_token=token),
                metadata=gateway.service("ValidateAccessToken"),
            )
            latencies.append(time.perf_counter() - start)
            await asyncio.sleep(0.02)

    async def loop_probe() -> None:
        # gRPC health on the auth port: how long auth's event loop takes to answer at all.
        while not done.is_set():
            start = time.perf_counter()
            await health.Check(health_pb2.HealthCheckRequest())
            loop_latencies.append(time.perf_counter() - start)
            await asyncio.sleep(0.02)

    async def login_worker(email: str, count: int) -> None:
        for _ in range(count):
            await stub.Login(
                pb.LoginRequest(email=email, password=PASSWORD), metadata=gateway.anonymous("Login")
            )

    # Phase 1, throughput: logins alone (the probes below would take CPU from them).
    start = time.perf_counter()
    await asyncio.gather(*(login_worker(e, LOGINS // LOGIN_CONCURRENCY) for e in emails))
    elapsed = time.perf_counter() - start
    # Phase 2, latency: the same login load, with validations and event-loop probes meanwhile.
    checkers = [asyncio.create_task(validator()), asyncio.create_task(loop_probe())]
    await asyncio.gather(*(login_worker(e, LOGINS // LOGIN_CONCURRENCY) for e in emails))
    done.set()
    await asyncio.gather(*checkers)
    return {
        "logins_per_s": LOGINS / elapsed,
        "validate_p50_ms": percentile(latencies, 50) * 1e3,
        "validate_p99_ms": percentile(latencies, 99) * 1e3,
        "validations": len(latencies),
        "loop_p50_ms": percentile(loop_latencies, 50) * 1e3,
        "loop_p99_ms": percentile(loop_latencies, 99) * 1e3,
    }


async def _p8(stub: auth_pb2_grpc.AuthServiceStub, gateway: Gateway) -> dict[str, float]:
    tokens = await stub.Login(
        pb.LoginRequest(email="bench0@example.com", password=PASSWORD),
        metadata=gateway.anonymous("Login"),
    )
    start = time.perf_counter()
    results = await asyncio.gather(
        *(
            stub.Refresh(
                pb.RefreshRequest(refresh_token=tokens.refresh_token),
                metadata=gateway.anonymous("Refresh"),
            )
            for _ in range(50)
        ),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - start
    errors = [r for r in results if isinstance(r, BaseException)]
    successors = {r.refresh_token for r in results if not isinstance(r, BaseException)}
    return {"errors": len(errors), "successors": len(successors), "seconds": elapsed}


def main() -> dict[str, float]:
    settings = AuthSettings()
    hash_cpu = _hash_cpu_seconds(settings)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        data_dir = Path(tmp)
        _, auth = crypto_and_auth(
            stack,
            data_dir,
            {
                "PALISADE_AUTH_REDIS_URL": REDIS_URL,
                "PALISADE_AUTH_THROTTLE_ACCOUNT_FAILURES": "100",
            },
        )
        auth_port = auth.port
        gateway = Gateway(data_dir)

        async def run() -> tuple[dict[str, float], dict[str, float]]:
            async with insecure_channel(f"127.0.0.1:{auth_port}") as channel:
                stub = auth_pb2_grpc.AuthServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                return await _p5(stub, health, gateway), await _p8(stub, gateway)

        p5, p8 = asyncio.run(run())
    ceiling = cores / hash_cpu
    hashing_only = hashing_only_rate(
        time_cost=settings.argon2_time_cost,
        memory_kib=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        threads=cores,
        per_thread=40,
    )
    print_table(
        "P5  password logins (Argon2id "
        f"m={settings.argon2_memory_kib} t={settings.argon2_time_cost} "
        f"p={settings.argon2_parallelism}; {LOGINS} logins, {LOGIN_CONCURRENCY} in flight)",
        [
            ("CPU time of one hash", f"{hash_cpu * 1e3:.1f} ms"),
            ("ceiling: cores / hash CPU", f"{ceiling:.1f} logins/s ({cores} cores)"),
            (
                f"hashing only, {cores} threads, nothing else running",
                f"{hashing_only:.1f} hashes/s = {hashing_only / ceiling:.2f} of ceiling",
            ),
            ("logins/s through auth", f"{p5['logins_per_s']:.1f}"),
            (
                "ratio to ceiling",
                f"{p5['logins_per_s'] / ceiling:.2f}   target >= 0.85   "
                f"({p5['logins_per_s'] / hashing_only:.2f} of hashing only)",
            ),
            ("ValidateAccessToken (DB read) during logins p50", f"{p5['validate_p50_ms']:.2f} ms"),
            (
                "ValidateAccessToken (DB read) during logins p99",
                f"{p5['validate_p99_ms']:.2f} ms   ({p5['validations']:.0f} samples)",
            ),
            ("auth event loop (gRPC health) during logins p50", f"{p5['loop_p50_ms']:.2f} ms"),
            (
                "auth event loop (gRPC health) during logins p99",
                f"{p5['loop_p99_ms']:.2f} ms   target < 20 ms",
            ),
        ],
    )
    print_table(
        "P8  50 concurrent refreshes of one token",
        [
            ("errors", f"{p8['errors']:.0f}   target 0"),
            ("distinct successors returned", f"{p8['successors']:.0f}   (one chain)"),
            ("wall time", f"{p8['seconds'] * 1e3:.0f} ms"),
        ],
    )
    return {
        "p5_ratio": p5["logins_per_s"] / ceiling,
        "p5_loop_p99_ms": p5["loop_p99_ms"],
        "p8_errors": p8["errors"],
    }


if __name__ == "__main__":
    main()
