"""gRPC aio server bootstrap: interceptors, health, reflection, /metrics, graceful shutdown.

    async with run_server(name="crypto", settings=s, verifier=v, registry=r, add_servicers=f):
        await wait_for_termination()

Port 0 in the settings picks a free port; the bound ports are on the returned handle.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from palisade.common.caller import AssertionVerifier
from palisade.common.interceptors import (
    CallerAssertionInterceptor,
    ErrorMappingInterceptor,
    InterceptorChain,
    LoggingInterceptor,
    MetricsInterceptor,
)
from palisade.common.metrics import GrpcServerMetrics, start_metrics_endpoint
from palisade.common.settings import CommonSettings

log = logging.getLogger("palisade.server")

# Largest request or response message; batch limits inside services are tighter.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

# Channel options shared by servers and clients. The HTTP/2 stream window starts at 64 KiB,
# so a 1,000-field batch (about 60 KiB each way) waited for WINDOW_UPDATE round trips: a larger
# lookahead lets a whole batch travel in one flight (measured in bench/p6_crypto_batch.py).
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.http2.lookahead_bytes", 4 * 1024 * 1024),
]


@dataclass
class RunningServer:
    """A started server: where it listens and how to flip its health."""

    name: str
    grpc_port: int
    metrics_port: int
    server: grpc.aio.Server
    health: health_aio.HealthServicer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@asynccontextmanager
async def run_server(
    *,
    name: str,
    settings: CommonSettings,
    verifier: AssertionVerifier,
    registry: CollectorRegistry,
    add_servicers: Callable[[grpc.aio.Server], Sequence[str]],
) -> AsyncIterator[RunningServer]:
    """Starts the service's gRPC server; stops it gracefully when the block exits.

    add_servicers registers the service's servicers and returns their full service names,
    which are announced through health checking and reflection.
    """
    server = grpc.aio.server(
        interceptors=[
            InterceptorChain(
                [
                    LoggingInterceptor(),
                    MetricsInterceptor(GrpcServerMetrics(registry)),
                    ErrorMappingInterceptor(),
                    CallerAssertionInterceptor(verifier),
                ]
            )
        ],
        options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
    )
    service_names = list(add_servicers(server))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [
            *service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    grpc_port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    if grpc_port == 0:
        raise OSError(f"could not bind gRPC port {settings.grpc_host}:{settings.grpc_port}")
    metrics = start_metrics_endpoint(settings.metrics_host, settings.metrics_port, registry)
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ["", *service_names]:
        await health.set(service, serving)
    running = RunningServer(name, grpc_port, metrics.port, server, health)
    log.info(
        "serving", extra={"grpc_port": grpc_port, "metrics_port": metrics.port, "service": name}
    )
    try:
        yield running
    finally:
        # Probes see NOT_SERVING first, so load balancers drain us before the port closes.
        await health.enter_graceful_shutdown()
        await server.stop(settings.shutdown_grace_seconds)
        metrics.stop()
        log.info("stopped", extra={"service": name})


async def wait_for_termination() -> None:
    """Returns when the process receives SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
