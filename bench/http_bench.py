"""Helpers for the HTTP benchmarks (P2, P3): the suite behind a gateway process, a signed-in
user, the load generator, and the gateway's own account of token-cache hits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import REDIS_URL, ROOT, free_port, fresh_postgres_database, running_service

PASSWORD = "correct horse battery staple"
CONNECTIONS = 32  # in flight on each side, as in PERFORMANCE.md's gRPC floor
WARMUP_SECONDS = 1.0
SECONDS = 4.0
TRIALS = 5  # alternating; the best of each side counts (the least disturbed)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _post_json(url: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@contextmanager
def http_process(argv: list[str], env: dict[str, str], ready_url: str) -> Iterator[int]:
    """Runs a Python HTTP server process until the block ends; ready once ready_url answers.
    Yields its process id."""
    process = subprocess.Popen([sys.executable, *argv], env={**os.environ, **env}, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(ready_url)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{argv} did not become ready")
            time.sleep(0.1)
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass(frozen=True)
class GatewayProcess:
    http_port: int
    metrics_port: int
    pid: int
    # Every Palisade process of the suite (crypto, auth, gateway), for CPU accounting.
    pids: dict[str, int] = field(default_factory=dict)


@contextmanager
def suite_behind_gateway(
    data_dir: Path,
    extra_env: dict[str, str] | None = None,
    *,
    production_backends: bool = False,
    auth_env: dict[str, str] | None = None,
) -> Iterator[GatewayProcess]:
    """Crypto, auth, apikeys, audit, visitors, webhooks and a gateway, ready to serve (the
    gateway is ready only once every upstream is; audit also takes the events auth and apikeys
    forward, as in production).

    By default on the embedded SQLite: enough where the measured requests are token-cache hits,
    which touch no database. With production_backends, crypto and auth each get a fresh Postgres
    database and auth uses Redis, as in production: for routes that reach a
    backend, whose cost is what is measured.
    """
    with ExitStack() as stack:
        audit_port = free_port()  # auth and apikeys forward their events to it
        crypto_env: dict[str, str] = {}
        auth_extra: dict[str, str] = {}
        if production_backends:
            crypto_env["PALISADE_CRYPTO_DATABASE_URL"] = stack.enter_context(
                fresh_postgres_database()
            )
            auth_extra["PALISADE_AUTH_DATABASE_URL"] = stack.enter_context(
                fresh_postgres_database()
            )
            auth_extra["PALISADE_AUTH_REDIS_URL"] = REDIS_URL
        crypto = stack.enter_context(
            running_service("palisade.crypto", "PALISADE_CRYPTO_", data_dir, crypto_env)
        )
        auth = stack.enter_context(
            running_service(
                "palisade.auth",
                "PALISADE_AUTH_",
                data_dir,
                {
                    "PALISADE_AUTH_CRYPTO_TARGET": f"127.0.0.1:{crypto.port}",
                    "PALISADE_AUTH_AUDIT_TARGET": f"127.0.0.1:{audit_port}",
                    **auth_extra,
                    **(auth_env or {}),
                },
            )
        )
        apikeys_env = {
            "PALISADE_APIKEYS_CRYPTO_TARGET": f"127.0.0.1:{crypto.port}",
            "PALISADE_APIKEYS_AUTH_TARGET": f"127.0.0.1:{auth.port}",
            "PALISADE_APIKEYS_AUDIT_TARGET": f"127.0.0.1:{audit_port}",
        }
        if production_backends:
            apikeys_env["PALISADE_APIKEYS_DATABASE_URL"] = stack.enter_context(
                fresh_postgres_database()
            )
            apikeys_env["PALISADE_APIKEYS_REDIS_URL"] = REDIS_URL
        apikeys = stack.enter_context(
            running_service("palisade.apikeys", "PALISADE_APIKEYS_", data_dir, apikeys_env)
        )
        audit = stack.enter_context(
            running_service(
                "palisade.audit",
                "PALISADE_AUDIT_",
                data_dir,
                {
                    "PALISADE_AUDIT_CRYPTO_TARGET": f"127.0.0.1:{crypto.port}",
                    "PALISADE_AUDIT_AUTH_TARGET": f"127.0.0.1:{auth.port}",
                },
                port=audit_port,
            )
        )
        visitors = stack.enter_context(
            running_service(
                "palisade.visitors",
                "PALISADE_VISITORS_",
                data_dir,
                {
                    "PALISADE_VISITORS_CRYPTO_TARGET": f"127.0.0.1:{crypto.port}",
                    "PALISADE_VISITORS_AUDIT_TARGET": f"127.0.0.1:{audit.port}",
                },
            )
        )
        webhooks = stack.enter_context(
            running_service(
                "palisade.webhooks",
                "PALISADE_WEBHOOKS_",
                data_dir,
                {
                    "PALISADE_WEBHOOKS_CRYPTO_TARGET": f"127.0.0.1:{crypto.port}",
                    "PALISADE_WEBHOOKS_AUDIT_TARGET": f"127.0.0.1:{audit.port}",
                    "PALISADE_WEBHOOKS_AUTH_TARGET": f"127.0.0.1:{auth.port}",
                },
            )
        )
        http_port, metrics_port = free_port(), free_port()
        env = {
            "PALISADE_DATA_DIR": str(data_dir),
            "PALISADE_GATEWAY_HTTP_PORT": str(http_port),
            "PALISADE_GATEWAY_METRICS_PORT": str(metrics_port),
            "PALISADE_GATEWAY_AUTH_TARGET": f"127.0.0.1:{auth.port}",
            "PALISADE_GATEWAY_APIKEYS_TARGET": f"127.0.0.1:{apikeys.port}",
            "PALISADE_GATEWAY_AUDIT_TARGET": f"127.0.0.1:{audit.port}",
            "PALISADE_GATEWAY_VISITORS_TARGET": f"127.0.0.1:{visitors.port}",
            "PALISADE_GATEWAY_WEBHOOKS_TARGET": f"127.0.0.1:{webhooks.port}",
            "PALISADE_GATEWAY_LOG_LEVEL": "WARNING",
            # One signed-in bench user sends thousands of requests a second: the per-user
            # limit would refuse most of them, and the benches measure serving, not refusing.
            # (P4 sets its own limits to measure the limiter itself.)
            "PALISADE_GATEWAY_USER_RATE_LIMIT_PER_MINUTE": str(60_000_000),
            "PALISADE_GATEWAY_USER_RATE_LIMIT_BURST": str(1_000_000),
            **(extra_env or {}),
        }
        ready = f"http://127.0.0.1:{http_port}/readyz"
        pid = stack.enter_context(http_process(["-m", "palisade.gateway", "serve"], env, ready))
        pids = {
            "crypto": crypto.pid,
            "auth": auth.pid,
            "apikeys": apikeys.pid,
            "audit": audit.pid,
            "visitors": visitors.pid,
            "webhooks": webhooks.pid,
            "gateway": pid,
        }
        yield GatewayProcess(http_port, metrics_port, pid, pids)


@contextmanager
def hello_world() -> Iterator[int]:
    port = free_port()
    argv = ["-m", "bench.hello_http", "--port", str(port)]
    with http_process(argv, {}, f"http://127.0.0.1:{port}/hello"):
        yield port


def signed_in_token(http_port: int, email: str = "bench@example.com") -> str:
    base = f"http://127.0.0.1:{http_port}"
    status, _ = _post_json(
        f"{base}/v1/auth/signup", {"email": email, "password": PASSWORD, "name": "Bench"}
    )
    assert status == 201, status
    status, tokens = _post_json(f"{base}/v1/auth/login", {"email": email, "password": PASSWORD})
    assert status == 200, tokens
    token = tokens["accessToken"]
    assert isinstance(token, str)
    return token


def _samples(metrics_port: int, name: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    _, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.name == name
    ]


def cache_lookups(metrics_port: int) -> dict[str, float]:
    """The gateway's token-cache lookups so far, {"hit": n, "miss": n}."""
    counts = {"hit": 0.0, "miss": 0.0}
    for labels, value in _samples(metrics_port, "palisade_gateway_token_cache_lookups_total"):
        counts[labels["result"]] = value
    return counts


def requests_answered(metrics_port: int, route: str) -> float:
    """Requests the gateway answered so far on one route template."""
    samples = _samples(metrics_port, "palisade_gateway_requests_total")
    return sum(value for labels, value in samples if labels["route"] == route)


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far; None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_cached(http_port: int, metrics_port: int, token: str) -> None:
    """Readiness, not timing: the gateway caches only once it follows the revocation feed."""
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        before = cache_lookups(metrics_port)["hit"]
        assert _get(f"http://127.0.0.1:{http_port}/v1/whoami", headers)[0] == 200
        if cache_lookups(metrics_port)["hit"] > before:
            return
        time.sleep(0.1)
    raise RuntimeError("the gateway never answered from its token cache")


def load_argv(
    port: int,
    path: str,
    *,
    connections: int = CONNECTIONS,
    warmup: float = WARMUP_SECONDS,
    seconds: float = SECONDS,
    method: str = "GET",
    headers: list[str] | None = None,
    bodies: list[str] | None = None,
    content_type: str = "application/json",
    latencies: bool = False,
) -> list[str]:
    """The command line of one bench.http_load run (its own process)."""
    return [
        sys.executable,
        "-m",
        "bench.http_load",
        f"--port={port}",
        f"--path={path}",
        f"--method={method}",
        f"--connections={connections}",
        f"--warmup={warmup}",
        f"--seconds={seconds}",
        f"--content-type={content_type}",
        *(f"--header={header}" for header in headers or []),
        *(f"--body={body}" for body in bodies or []),
        *(["--latencies"] if latencies else []),
    ]


def http_load(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: list[str] | None = None,
    body: str | None = None,
) -> dict[str, float]:
    """One trial of bench.http_load (its own process): {"rate", "failed", "cpu_share"}."""
    argv = load_argv(
        port,
        path,
        method=method,
        headers=headers,
        bodies=[body] if body is not None else None,
    )
    done = subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout)
    if result["failed"]:
        raise RuntimeError(f"{method} {path}: {result['failed']:.0f} requests failed")
    return result
