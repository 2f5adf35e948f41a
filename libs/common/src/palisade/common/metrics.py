"""Prometheus metrics: a registry per server (no process globals) and its /metrics endpoint."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

if TYPE_CHECKING:
    from palisade.common.interceptors.base import RpcInfo

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class GrpcServerMetrics:
    """The standard per-RPC series every Palisade service exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method", "grpc_code")
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            labels,
            registry=registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "Time to handle an RPC on the server, by status code.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, info: RpcInfo, code: str, seconds: float) -> None:
        labels = (info.kind, info.service, info.method, code)
        self.handled.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)


@dataclass
class MetricsEndpoint:
    """A running /metrics HTTP server (in its own thread, off the event loop)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_endpoint(host: str, port: int, registry: CollectorRegistry) -> MetricsEndpoint:
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsEndpoint(server=server, thread=thread)
