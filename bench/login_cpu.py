"""Auth's CPU per password login outside the hash: real crypto and auth processes on Postgres
and Redis, N sequential-ish logins, and the CPU of auth's main (event-loop) thread read from
/proc/<pid>/task/<pid>/stat before and after (the Argon2id hash runs in a worker thread and is
not in it). The whole process's CPU is shown too.

    .venv/bin/python -m bench.login_cpu [logins]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.common import REDIS_URL, fresh_postgres_database, running_service
from bench.p5_p8_auth import PASSWORD, Gateway
from palisade.common.grpc_client import insecure_channel
from palisade_api.auth.v1 import auth_pb2 as pb
from palisade_api.auth.v1 import auth_pb2_grpc

CONCURRENCY = 4
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(path: str) -> float:
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def main(logins: int = 200) -> None:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        data_dir = Path(tmp)
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
                    "PALISADE_AUTH_REDIS_URL": os.environ.get("BENCH_REDIS_URL", REDIS_URL),
                    "PALISADE_AUTH_CRYPTO_TARGET": f"127.0.0.1:{crypto.port}",
                },
            )
        )
        gateway = Gateway(data_dir)
        emails = [f"cpu{i}@example.com" for i in range(CONCURRENCY)]

        async def run() -> tuple[float, float]:
            async with insecure_channel(f"127.0.0.1:{auth.port}") as channel:
                stub = auth_pb2_grpc.AuthServiceStub(channel)
                for email in emails:
                    await stub.SignUp(
                        pb.SignUpRequest(email=email, password=PASSWORD, name="Bench"),
                        metadata=gateway.anonymous("SignUp"),
                    )

                async def worker(email: str, count: int) -> None:
                    for _ in range(count):
                        await stub.Login(
                            pb.LoginRequest(email=email, password=PASSWORD),
                            metadata=gateway.anonymous("Login"),
                        )

                await asyncio.gather(*(worker(e, 5) for e in emails))  # warm up
                main_before = _cpu(f"/proc/{auth.pid}/task/{auth.pid}/stat")
                proc_before = _cpu(f"/proc/{auth.pid}/stat")
                await asyncio.gather(*(worker(e, logins // CONCURRENCY) for e in emails))
                main_after = _cpu(f"/proc/{auth.pid}/task/{auth.pid}/stat")
                proc_after = _cpu(f"/proc/{auth.pid}/stat")
                return main_after - main_before, proc_after - proc_before

        main_cpu, proc_cpu = asyncio.run(run())
        done = logins // CONCURRENCY * CONCURRENCY
        print(f"logins: {done}")
        print(f"auth main thread CPU per login: {main_cpu / done * 1e3:.2f} ms")
        print(f"auth process CPU per login:     {proc_cpu / done * 1e3:.2f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
