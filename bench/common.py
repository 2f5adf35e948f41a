"""Helpers shared by the benchmarks: free ports, starting a service process, timing, tables."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RunningService:
    port: int  # gRPC
    pid: int


@contextmanager
def service_process(
    module: str, env_prefix: str, data_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[int]:
    """Runs `python -m module serve` on free ports; yields its gRPC port once it is SERVING."""
    with running_service(module, env_prefix, data_dir, extra_env) as service:
        yield service.port


@contextmanager
def running_service(
    module: str,
    env_prefix: str,
    data_dir: Path,
    extra_env: dict[str, str] | None = None,
    *,
    port: int | None = None,
) -> Iterator[RunningService]:
    """Like service_process, yielding the process id too (for CPU accounting from /proc).
    port: the gRPC port, when callers started earlier must already know it."""
    port = port or free_port()
    env = {
        **os.environ,
        "PALISADE_DATA_DIR": str(data_dir),
        f"{env_prefix}GRPC_PORT": str(port),
        f"{env_prefix}METRICS_PORT": str(free_port()),
        f"{env_prefix}LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    process = subprocess.Popen([sys.executable, "-m", module, "serve"], env=env, cwd=ROOT)
    try:
        wait_until_serving(port, process, within_seconds=60)
        yield RunningService(port, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_until_serving(port: int, process: subprocess.Popen[bytes], within_seconds: float) -> None:
    """Polls gRPC health on `port` until SERVING; raises if the process dies or time runs out."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + within_seconds
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
            time.sleep(0.1)


def best_rate(run_once: Callable[[], float], repeats: int = 5) -> tuple[float, float]:
    """Runs a timed trial several times; returns (best, median) of its per-second rate."""
    rates = [run_once() for _ in range(repeats)]
    return max(rates), statistics.median(rates)


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 24))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


POSTGRES_ADMIN_URL = os.environ.get(
    "PALISADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("PALISADE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new Postgres database for one benchmark run (SQLAlchemy URL), dropped afterwards."""
    import uuid

    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    name = f"palisade_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def hashing_only_rate(
    *, time_cost: int, memory_kib: int, parallelism: int, threads: int, per_thread: int = 6
) -> float:
    """Argon2id verifications per second with `threads` threads doing nothing else, in one
    process: what this machine sustains when hashes run side by side (they share caches and
    memory bandwidth), as opposed to cores / CPU time of one hash measured alone. The login
    ratios are shown against both: the gap between the two is the hardware's, not a server's."""
    import threading

    from argon2 import PasswordHasher as Argon2Hasher

    hasher = Argon2Hasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
    stored = hasher.hash("benchmark password")
    hasher.verify(stored, "benchmark password")

    def work() -> None:
        for _ in range(per_thread):
            hasher.verify(stored, "benchmark password")

    workers = [threading.Thread(target=work) for _ in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * per_thread / (time.perf_counter() - start)


def crypto_and_auth(
    stack: ExitStack, data_dir: Path, auth_env: dict[str, str] | None = None
) -> tuple[RunningService, RunningService]:
    """Crypto and auth as processes, each on a fresh Postgres database of its own, auth
    pointed at crypto (auth_env adds to auth's environment); stopped when `stack` closes."""
    crypto_db = stack.enter_context(fresh_postgres_database())
    auth_db = stack.enter_context(fresh_postgres_database())
    crypto = stack.enter_context(
        running_service(
            "palisade.crypto",
            "PALISADE_CRYPTO_",
            data_dir,
            {"PALISADE_CRYPTO_DATABASE_URL": crypto_db},
        )
    )
    auth = stack.enter_context(
        running_service(
            "palisade.auth",
            "PALISADE_AUTH_",
            data_dir,
            {
                "PALISADE_AUTH_DATABASE_URL": auth_db,
                "PALISADE_AUTH_CRYPTO_TARGET": f"127.0.0.1:{crypto.port}",
                **(auth_env or {}),
            },
        )
    )
    return crypto, auth
