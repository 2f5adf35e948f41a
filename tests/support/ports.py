"""Ports for servers that tests start later (when a port must be known ahead)."""

from __future__ import annotations

import os
import random
import socket
from collections import deque
from pathlib import Path

# How many of the ports below the ephemeral range are handed out (split among test workers).
_SPAN = 12000
# Ports this process handed out lately: a server picked for may bind seconds later (after
# the services started before it), and the same port must not go to another one meanwhile.
_RECENT: deque[int] = deque(maxlen=512)


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_slice(low: int, high: int) -> tuple[int, int]:
    """This pytest-xdist worker's own part of [low, high): workers never pick the same port
    (two of them checking one free port at once, then both binding it, failed CI once)."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    try:
        count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
        index = int(name.removeprefix("gw")) % count if name.startswith("gw") else 0
    except ValueError:
        return low, high
    size = (high - low) // count
    return low + index * size, low + (index + 1) * size


def port_for_later() -> int:
    """A port nothing listens on right now (for a service started later).

    Taken below the kernel's ephemeral range: bind(0) hands out a port from that range, and
    so does every outgoing connection for its source port, so between this check and the
    service's bind one of the machine's many client connections (gRPC, Postgres, Redis) could
    take it ("Failed to bind", seen with several suites running at once). Each test worker
    picks from a part of the range of its own, and never hands out one port twice in a row of
    512."""
    ephemeral_low = _ephemeral_low()
    low, high = _worker_slice(max(1024, ephemeral_low - _SPAN), ephemeral_low)
    for _ in range(200):
        port = random.randrange(low, high)
        if port in _RECENT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _RECENT.append(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
