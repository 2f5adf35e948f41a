"""Per-request CPU budget of the routes that reach a backend: `GET /v1/me`, `GET /v1/me/sessions`
and `POST /v1/auth/refresh`, through the gateway, on Postgres and Redis as in production.

The figure is CPU time (user + system, read from /proc/<pid>/stat) that all Palisade processes
(gateway, auth, crypto) used over a trial, divided by the requests answered in it, shown per
process. CPU per request, unlike requests/s, barely moves with what else the machine is doing,
so a change that adds a query, a transaction or a log line shows up here as microseconds.
Postgres's own CPU is shown apart (its backends are not Palisade processes, but an extra
statement costs there too).

Each trial drives one route with 32 requests in flight: `GET` routes with bench/http_load.py in
its own process; refreshes with an in-process client (each request needs the token the previous
answer returned, which a fixed-request load generator cannot send; the client's own CPU is not
counted). The best (least CPU) of the trials counts; the median is shown too.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import print_table
from bench.http_bench import (
    CONNECTIONS,
    PASSWORD,
    GatewayProcess,
    _post_json,
    cpu_seconds,
    http_load,
    requests_answered,
    signed_in_token,
    suite_behind_gateway,
    wait_until_cached,
)

TRIALS = 3
REFRESH_SECONDS = 4.0
ROUTES = ("GET /v1/me", "GET /v1/me/sessions", "POST /v1/auth/refresh")


def _postgres_cpu_seconds() -> float:
    """CPU of every postgres process on the machine (the server's backends and workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        total += _with_reaped_children(int(entry.name))
    return total


def _with_reaped_children(pid: int) -> float:
    """utime + stime + cutime + cstime: a backend that exits mid-trial moves its CPU into the
    postmaster's children's time instead of vanishing from the sum."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _cpu(gateway: GatewayProcess) -> dict[str, float]:
    sample = {name: cpu_seconds(pid) or 0.0 for name, pid in gateway.pids.items()}
    sample["postgres"] = _postgres_cpu_seconds()
    return sample


def _refresh_tokens(http_port: int, email: str, count: int) -> list[str]:
    """`count` sessions of one user (one login each): one refresh chain per connection."""
    tokens = []
    for _ in range(count):
        status, answer = _post_json(
            f"http://127.0.0.1:{http_port}/v1/auth/login", {"email": email, "password": PASSWORD}
        )
        assert status == 200, answer
        tokens.append(str(answer["refreshToken"]))
    return tokens


async def _drive_refreshes(http_port: int, tokens: list[str], seconds: float) -> None:
    """Each worker refreshes its own chain (always the newest token) until time is up."""
    url = f"http://127.0.0.1:{http_port}/v1/auth/refresh"
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=len(tokens))
    async with aiohttp.ClientSession(connector=connector) as client:

        async def worker(token: str) -> None:
            while time.monotonic() < deadline:
                async with client.post(url, json={"refreshToken": token}) as response:
                    body = await response.json()
                    if response.status != 200:
                        raise RuntimeError(f"refresh answered {response.status}: {body}")
                    token = body["refreshToken"]

        await asyncio.gather(*(worker(token) for token in tokens))


def _trial(gateway: GatewayProcess, route: str, access: str, email: str) -> dict[str, float]:
    method, path = route.split(" ", 1)
    tokens = _refresh_tokens(gateway.http_port, email, CONNECTIONS) if method == "POST" else []
    # Counted by the gateway itself, so the warm-up's requests and their CPU both count.
    answered_before, before = requests_answered(gateway.metrics_port, path), _cpu(gateway)
    if method == "POST":
        asyncio.run(_drive_refreshes(gateway.http_port, tokens, REFRESH_SECONDS))
    else:
        http_load(gateway.http_port, path, headers=[f"Authorization: Bearer {access}"])
    after = _cpu(gateway)
    answered = requests_answered(gateway.metrics_port, path) - answered_before
    per_request = {name: (after[name] - before[name]) / answered * 1e6 for name in before}
    per_request["palisade"] = sum(per_request[name] for name in gateway.pids)
    return per_request


def main() -> dict[str, float]:
    trials: dict[str, list[dict[str, float]]] = {route: [] for route in ROUTES}
    email = "budget@example.com"
    with (
        tempfile.TemporaryDirectory() as tmp,
        suite_behind_gateway(Path(tmp), production_backends=True) as gateway,
    ):
        access = signed_in_token(gateway.http_port, email)
        wait_until_cached(gateway.http_port, gateway.metrics_port, access)
        for _ in range(TRIALS):
            for route in ROUTES:
                trials[route].append(_trial(gateway, route, access, email))
    rows: list[tuple[str, str]] = []
    figures: dict[str, float] = {}
    for route in ROUTES:
        best = min(trials[route], key=lambda t: t["palisade"])
        median = statistics.median(t["palisade"] for t in trials[route])
        parts = ", ".join(f"{name} {best[name]:.0f}" for name in ("gateway", "auth", "crypto"))
        rows.append((route, f"{best['palisade']:,.0f} us   (median {median:,.0f}; {parts})"))
        rows.append((f"  + postgres for {route}", f"{best['postgres']:,.0f} us"))
        key = "cpu_us_" + route.split(" ", 1)[1].strip("/").replace("/", "_")
        figures[key] = best["palisade"]
    print_table(
        f"CPU per request across Palisade's processes (Postgres + Redis; {CONNECTIONS} in "
        f"flight; least of {TRIALS})",
        rows,
    )
    out = Path("var/bench")
    out.mkdir(parents=True, exist_ok=True)
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    (out / f"cpu-budget-{sha or 'unknown'}.json").write_text(
        json.dumps({"commit": sha, "trials": trials, "figures": figures}, indent=2) + "\n"
    )
    return figures


if __name__ == "__main__":
    os.environ.setdefault("PALISADE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    main()
