"""`make bench`: runs every benchmark and prints its table (not part of `make test`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import p6_crypto_batch

BENCHMARKS = [p6_crypto_batch]


def main() -> int:
    for benchmark in BENCHMARKS:
        benchmark.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
