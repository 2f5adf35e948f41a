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

from bench.common import REDIS_URL, crypto_and_auth, print_table
from bench.p5_p8_auth import PASSWORD, Gateway
from palisade.common.grpc_client import insecure_channel
from palisade_api.auth.v1 import auth_pb2 as pb
from palisade_api.auth.v1 import auth_pb2_grpc

CONCURRENCY = 4
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(path: str) -> float:
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def main(logins: int = 200) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        data_dir = Path(tmp)
        _, auth = crypto_and_auth(
            stack,
            data_dir,
            {"PALISADE_AUTH_REDIS_URL": os.environ.get("BENCH_REDIS_URL", REDIS_URL)},
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
        print_table(
            f"Auth's CPU per password login ({done} logins, {CONCURRENCY} in flight)",
            [
                ("auth event-loop thread (outside the hash)", f"{main_cpu / done * 1e3:.2f} ms"),
                ("auth process (the hash included)", f"{proc_cpu / done * 1e3:.2f} ms"),
            ],
        )
        return {"login_cpu_ms_event_loop": main_cpu / done * 1e3}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
