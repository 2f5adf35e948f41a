"""P11: creating and reading a visitor through the gateway with a secret key.

Target (PERFORMANCE.md P11): exactly one crypto round trip per create (the envelopes and the
blind indexes in one Encrypt) and per read (one Decrypt); create throughput >= 0.6 of posting
a chat message on the same path (same gateway, key, service and database, but no PII).

- The suite as in production where it matters: crypto and visitors on fresh Postgres
  databases (a create also writes the visitor's subject key row in crypto's), auth and apikeys
  on the embedded SQLite (the key is a gateway cache hit), audit receiving the events as in
  production, the gateway with a secret key.
- Round trips: crypto's own `grpc_server_handled_total` by method, read before and after a run
  of sequential creates and reads, divided by the requests (any other crypto call made meanwhile
  would show; visitors forwards its events to audit once a minute, so audit's own Encrypt per
  Ingest batch stays out of the window).
- Throughput: bench/http_load.py (its own process, CONNECTIONS in flight), POST /v1/visitors
  with name, email and phone, and POST /v1/chats/{id}/messages, in alternating trials; the best
  trial of each counts. GET /v1/visitors/{id} is measured as well.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from bench.common import free_port, fresh_postgres_database, print_table, running_service
from bench.http_bench import (
    CONNECTIONS,
    TRIALS,
    _samples,
    http_load,
    http_process,
    signed_in_token,
)

SEQUENTIAL = 50
VISITOR = {"name": "Bench Visitor", "email": "Bench.Visitor@example.com", "phone": "+4915112345678"}
MESSAGE = {"body": "Hello, I have a question about my order."}


def _call(port: int, method: str, path: str, credential: str, body: object | None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {credential}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status in (200, 201), response.status
        return dict(json.loads(response.read() or b"{}"))


def _crypto_calls(metrics_port: int) -> dict[str, float]:
    calls: dict[str, float] = {}
    for labels, value in _samples(metrics_port, "grpc_server_handled_total"):
        if labels.get("grpc_service", "").endswith("CryptoService"):
            calls[labels["grpc_method"]] = calls.get(labels["grpc_method"], 0.0) + value
    return calls


def _quiet(metrics_port: int) -> None:
    """Waits until crypto has had no call for a second: the key's apikey.created event (and
    auth's), forwarded to audit, cost audit an Encrypt that must not land in a counted window."""
    deadline = time.monotonic() + 30
    last = _crypto_calls(metrics_port)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = _crypto_calls(metrics_port)
        if now == last:
            return
        last = now
    raise RuntimeError("crypto never went quiet")


def _per_request(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {m: (after[m] - before.get(m, 0.0)) / n for m in after if after[m] != before.get(m, 0)}


def _rates(rates: list[float]) -> str:
    return f"{max(rates):,.0f} requests/s   (median {statistics.median(rates):,.0f})"


def _pool(service: str) -> dict[str, str]:
    """Smaller pools than the default 16 + 8: a shared Postgres (100 connections) also serves
    other runs on a CI host, and "too many clients" would fail requests, not slow them."""
    return {
        f"PALISADE_{service}_DATABASE_POOL_SIZE": "8",
        f"PALISADE_{service}_DATABASE_MAX_OVERFLOW": "4",
    }


def _suite(stack: ExitStack, data_dir: Path) -> tuple[int, int]:
    """Crypto, auth, apikeys, visitors and a gateway: (gateway HTTP port, crypto metrics port)."""
    crypto_metrics = free_port()
    crypto = stack.enter_context(
        running_service(
            "palisade.crypto",
            "PALISADE_CRYPTO_",
            data_dir,
            {
                "PALISADE_CRYPTO_DATABASE_URL": stack.enter_context(fresh_postgres_database()),
                "PALISADE_CRYPTO_METRICS_PORT": str(crypto_metrics),
                **_pool("CRYPTO"),
            },
        )
    )
    crypto_target = f"127.0.0.1:{crypto.port}"
    auth = stack.enter_context(
        running_service(
            "palisade.auth",
            "PALISADE_AUTH_",
            data_dir,
            {
                "PALISADE_AUTH_CRYPTO_TARGET": crypto_target,
                "PALISADE_AUTH_UNVERIFIED_RESTRICTIONS": "[]",  # the bench owner creates keys
            },
        )
    )
    # The security log: the visitors' events flow there, and the gateway's /readyz checks it.
    audit = stack.enter_context(
        running_service(
            "palisade.audit",
            "PALISADE_AUDIT_",
            data_dir,
            {
                "PALISADE_AUDIT_CRYPTO_TARGET": crypto_target,
                "PALISADE_AUDIT_AUTH_TARGET": f"127.0.0.1:{auth.port}",
            },
        )
    )
    audit_target = f"127.0.0.1:{audit.port}"
    apikeys = stack.enter_context(
        running_service(
            "palisade.apikeys",
            "PALISADE_APIKEYS_",
            data_dir,
            {
                "PALISADE_APIKEYS_CRYPTO_TARGET": crypto_target,
                "PALISADE_APIKEYS_AUTH_TARGET": f"127.0.0.1:{auth.port}",
                "PALISADE_APIKEYS_AUDIT_TARGET": audit_target,
            },
        )
    )
    visitors = stack.enter_context(
        running_service(
            "palisade.visitors",
            "PALISADE_VISITORS_",
            data_dir,
            {
                "PALISADE_VISITORS_DATABASE_URL": stack.enter_context(fresh_postgres_database()),
                "PALISADE_VISITORS_CRYPTO_TARGET": crypto_target,
                **_pool("VISITORS"),
                "PALISADE_VISITORS_AUDIT_TARGET": audit_target,
                # Audit seals each Ingest batch's fields in one Encrypt of its own: forwarding
                # once a minute keeps those out of the counted window (events wait meanwhile).
                "PALISADE_VISITORS_AUDIT_POLL_SECONDS": "60",
            },
        )
    )
    http_port = free_port()
    env = {
        "PALISADE_DATA_DIR": str(data_dir),
        "PALISADE_GATEWAY_HTTP_PORT": str(http_port),
        "PALISADE_GATEWAY_METRICS_PORT": str(free_port()),
        "PALISADE_GATEWAY_AUTH_TARGET": f"127.0.0.1:{auth.port}",
        "PALISADE_GATEWAY_APIKEYS_TARGET": f"127.0.0.1:{apikeys.port}",
        "PALISADE_GATEWAY_VISITORS_TARGET": f"127.0.0.1:{visitors.port}",
        "PALISADE_GATEWAY_AUDIT_TARGET": audit_target,
        "PALISADE_GATEWAY_LOG_LEVEL": "WARNING",
        "PALISADE_GATEWAY_USER_RATE_LIMIT_PER_MINUTE": str(60_000_000),
        "PALISADE_GATEWAY_USER_RATE_LIMIT_BURST": str(1_000_000),
    }
    ready = f"http://127.0.0.1:{http_port}/readyz"
    stack.enter_context(http_process(["-m", "palisade.gateway", "serve"], env, ready))
    return http_port, crypto_metrics


def main() -> dict[str, float]:
    create_rates: list[float] = []
    message_rates: list[float] = []
    read_rates: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        port, crypto_metrics = _suite(stack, Path(tmp))
        token = signed_in_token(port)
        key = _call(
            port,
            "POST",
            "/v1/api-keys",
            token,
            {
                "name": "bench",
                "type": "secret",
                "scopes": ["visitors:read", "visitors:write", "chats:read", "chats:write"],
                "rateLimit": {"requestsPerMinute": 1_000_000, "burst": 100_000},
            },
        )["key"]
        visitor = _call(port, "POST", "/v1/visitors", key, VISITOR)
        chat = _call(port, "POST", "/v1/chats", key, {"visitorId": visitor["id"]})

        _quiet(crypto_metrics)
        before = _crypto_calls(crypto_metrics)
        for _ in range(SEQUENTIAL):
            _call(port, "POST", "/v1/visitors", key, VISITOR)
        per_create = _per_request(before, _crypto_calls(crypto_metrics), SEQUENTIAL)
        before = _crypto_calls(crypto_metrics)
        for _ in range(SEQUENTIAL):
            read = _call(port, "GET", f"/v1/visitors/{visitor['id']}", key, None)
            assert read["email"] == VISITOR["email"], read
        per_read = _per_request(before, _crypto_calls(crypto_metrics), SEQUENTIAL)
        before = _crypto_calls(crypto_metrics)
        for _ in range(SEQUENTIAL):
            _call(port, "POST", f"/v1/chats/{chat['id']}/messages", key, MESSAGE)
        per_message = _per_request(before, _crypto_calls(crypto_metrics), SEQUENTIAL)

        auth = [f"Authorization: Bearer {key}"]
        for _ in range(TRIALS):
            create_rates.append(
                http_load(
                    port, "/v1/visitors", method="POST", headers=auth, body=json.dumps(VISITOR)
                )["rate"]
            )
            message_rates.append(
                http_load(
                    port,
                    f"/v1/chats/{chat['id']}/messages",
                    method="POST",
                    headers=auth,
                    body=json.dumps(MESSAGE),
                )["rate"]
            )
            read_rates.append(
                http_load(port, f"/v1/visitors/{visitor['id']}", headers=auth)["rate"]
            )
    ratio = max(create_rates) / max(message_rates)
    create_trips = sum(per_create.values())
    read_trips = sum(per_read.values())
    print_table(
        f"P11  visitors through the gateway with a secret key, {CONNECTIONS} connections, "
        f"best of {TRIALS}",
        [
            ("crypto calls per create", f"{create_trips:.2f} {per_create}   target 1"),
            ("crypto calls per read", f"{read_trips:.2f} {per_read}   target 1"),
            ("crypto calls per chat message", f"{sum(per_message.values()):.2f}"),
            ("POST /v1/visitors (name, email, phone)", _rates(create_rates)),
            ("POST /v1/chats/{id}/messages (no PII)", _rates(message_rates)),
            ("GET /v1/visitors/{id}", _rates(read_rates)),
            ("ratio create / message", f"{ratio:.2f}   target >= 0.6"),
        ],
    )
    return {
        "p11_crypto_calls_per_create": create_trips,
        "p11_crypto_calls_per_read": read_trips,
        "p11_create_to_message_ratio": ratio,
    }


if __name__ == "__main__":
    main()
