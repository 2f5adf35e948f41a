"""Starts every Palisade service on its embedded default, one process each (`make run`).

Waits until each reports SERVING over gRPC health checking, prints where each listens, and on
Ctrl-C or SIGTERM stops them all gracefully. If any service dies, the others are stopped too.
State lives under var/ in the checkout, or $PALISADE_DATA_DIR.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    port: int
    metrics_port: int
    protocol: str = "grpc"  # "grpc": health checked over gRPC; "http": GET /readyz

    @property
    def env_prefix(self) -> str:
        return f"PALISADE_{self.name.upper()}_"

    @property
    def port_variable(self) -> str:
        return "GRPC_PORT" if self.protocol == "grpc" else "HTTP_PORT"


# Start order matters: services that others call come first. Later issues add theirs here.
SERVICES = [
    ServiceSpec("crypto", "palisade.crypto", 50051, 9101),
    ServiceSpec("auth", "palisade.auth", 50052, 9102),
    # Audit asks auth which workspaces exist; auth and apikeys forward their events to it (and
    # keep them in their outboxes until it is up).
    ServiceSpec("audit", "palisade.audit", 50054, 9104),
    ServiceSpec("apikeys", "palisade.apikeys", 50053, 9103),
    # Visitors calls crypto and forwards its events to audit; the gateway routes /v1/visitors
    # and /v1/chats to it on 50055 (its "visitors" upstream).
    ServiceSpec("visitors", "palisade.visitors", 50055, 9105),
    # Webhooks seals URLs and secrets through crypto, ships its events to audit and reads
    # audit's stream, and asks auth to email owners; the gateway routes /v1/webhooks and
    # /v1/webhook-event-types to it on 50056. PALISADE_WEBHOOKS_ALLOWED_NETWORKS stays unset
    # here (only public https receivers); set it to ["127.0.0.0/8"] to try a local receiver.
    ServiceSpec("webhooks", "palisade.webhooks", 50056, 9106),
    ServiceSpec("gateway", "palisade.gateway", 8080, 9100, protocol="http"),
]


def _port(env: dict[str, str], spec: ServiceSpec, field: str, default: int) -> int:
    return int(env.get(f"{spec.env_prefix}{field}", default))


def _http_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _wait_healthy(spec: ServiceSpec, port: int, process: subprocess.Popen[bytes]) -> None:
    name = spec.name
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    if spec.protocol == "http":
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode} while starting")
            if _http_ready(port):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not become ready within {START_TIMEOUT_SECONDS}s")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode} while starting")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not become healthy within {START_TIMEOUT_SECONDS}s")


def _stop_all(processes: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _, process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for name, process in reversed(processes):
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in time; killing it", file=sys.stderr)
            process.kill()


def main() -> int:
    env = dict(os.environ)
    data_dir = Path(env.setdefault("PALISADE_DATA_DIR", str(ROOT / "var")))
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    processes: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for spec in SERVICES:
            port = _port(env, spec, spec.port_variable, spec.port)
            metrics_port = _port(env, spec, "METRICS_PORT", spec.metrics_port)
            child_env = {
                **env,
                f"{spec.env_prefix}{spec.port_variable}": str(port),
                f"{spec.env_prefix}METRICS_PORT": str(metrics_port),
            }
            process = subprocess.Popen(
                [sys.executable, "-m", spec.module, "serve"], env=child_env, cwd=ROOT
            )
            processes.append((spec.name, process))
            _wait_healthy(spec, port, process)
            where = (
                f"gRPC 127.0.0.1:{port}"
                if spec.protocol == "grpc"
                else f"HTTP http://127.0.0.1:{port}"
            )
            print(
                f"palisade {spec.name:<8} {where}  metrics http://127.0.0.1:{metrics_port}/metrics",
                flush=True,
            )
        print(f"all services up; state in {data_dir}. Ctrl-C stops everything.", flush=True)
        while not stopping:
            for name, process in processes:
                if process.poll() is not None:
                    print(f"{name} exited with code {process.returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        _stop_all(processes)


if __name__ == "__main__":
    sys.exit(main())
