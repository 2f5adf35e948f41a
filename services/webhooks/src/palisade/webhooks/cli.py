"""palisade-webhooks: run the webhooks service, or operate on its endpoints and deliveries.

Only the argument parser exists so far; the service's commands come with its core.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="palisade-webhooks",
        description="The Palisade webhooks service (signed deliveries, SSRF-safe egress).",
    )


def main(argv: Sequence[str] | None = None) -> int:
    _parser().parse_args(argv)
    return 0
