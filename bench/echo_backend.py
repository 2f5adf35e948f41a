"""P3's backend: a bare gRPC echo service (bench/protos/bench_echo.proto), and its direct driver.

    python -m bench.echo_backend serve --stubs DIR --port 50070
    python -m bench.echo_backend drive --stubs DIR --port 50070 --concurrency 32

`serve` runs the echo service in its own process: grpc.aio with the channel options every
Palisade service uses, gRPC health (so the gateway's /readyz can see it), and no interceptors:
it is the same bare method whichever way it is reached. `drive` is the baseline client: one
channel (configured like the gateway's upstream channels), `concurrency` callers in a loop,
printing one JSON object like bench/http_load.py does.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import re
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.common import ROOT

PROTO = ROOT / "bench" / "protos" / "bench_echo.proto"
MODULE = "bench_echo_pb2"  # generated into the stubs folder; also named in the gateway config
SERVICE = "EchoService"
METHOD = "/palisade.bench.v1.EchoService/Echo"
# As tools/gen_protos.py does: palisade/... imports resolve to the palisade_api stubs.
_IMPORT = re.compile(r'^(import\s+")palisade/', re.MULTILINE)


def generate_stubs(out_dir: Path) -> None:
    """Compiles the bench proto into out_dir (bench_echo_pb2.py, bench_echo_pb2_grpc.py)."""
    from google.api import annotations_pb2
    from grpc_tools import protoc

    staging = out_dir / "staging"
    access = ROOT / "protos" / "palisade" / "common" / "v1" / "access.proto"
    (staging / "palisade_api" / "common" / "v1").mkdir(parents=True)
    (staging / "palisade_api" / "common" / "v1" / "access.proto").write_text(access.read_text())
    (staging / PROTO.name).write_text(_IMPORT.sub(r"\1palisade_api/", PROTO.read_text()))
    args = [
        "grpc_tools.protoc",
        f"-I{staging}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"-I{Path(annotations_pb2.__file__).parents[2]}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        PROTO.name,  # only this file: access_pb2 comes from palisade_api, as in the gateway
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on the bench proto")


def _stubs(directory: str) -> tuple[ModuleType, ModuleType]:
    sys.path.insert(0, directory)
    return importlib.import_module(MODULE), importlib.import_module(f"{MODULE}_grpc")


async def _serve(stubs: str, port: int) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

    from palisade.common.grpc_server import CHANNEL_OPTIONS

    messages, services = _stubs(stubs)

    class Echo(services.EchoServiceServicer):  # type: ignore[misc,name-defined]
        async def Echo(self, request: Any, context: Any) -> Any:
            return messages.EchoResponse(message=request.message)

    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    services.add_EchoServiceServicer_to_server(Echo(), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


async def _drive(
    stubs: str, port: int, concurrency: int, warmup: float, seconds: float
) -> dict[str, float]:
    from palisade.common.grpc_client import insecure_channel

    messages, _ = _stubs(stubs)
    request = messages.EchoRequest(message="hello")
    async with insecure_channel(f"127.0.0.1:{port}") as channel:
        # The multi-callable the gateway builds for each route, built the same way.
        echo = channel.unary_unary(
            METHOD,
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=messages.EchoResponse.FromString,
        )
        count = 0
        running = True

        async def caller() -> None:
            nonlocal count
            while running:
                await echo(request, timeout=10)
                count += 1

        callers = [asyncio.create_task(caller()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        before, started, cpu = count, time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - started
        result = {
            "rate": (count - before) / elapsed,
            "failed": 0.0,  # a failed call raises, ending the run
            "cpu_share": (time.process_time() - cpu) / elapsed,
        }
        running = False
        await asyncio.gather(*callers)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["serve", "drive"])
    parser.add_argument("--stubs", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(_serve(args.stubs, args.port))
        return 0
    result = asyncio.run(_drive(args.stubs, args.port, args.concurrency, args.warmup, args.seconds))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
