"""Ports for servers that tests start later (when a port must be known ahead)."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def port_for_later() -> int:
    """A port nothing listens on right now (for a service started later).

    Taken below the kernel's ephemeral range: bind(0) hands out a port from that range, and
    so does every outgoing connection for its source port, so between this check and the
    service's bind one of the machine's many client connections (gRPC, Postgres, Redis) could
    take it ("Failed to bind", seen with several suites running at once)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        ephemeral_low = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low = max(1024, ephemeral_low - 12000)
    for _ in range(100):
        port = random.randrange(low, ephemeral_low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
