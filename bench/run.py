"""`make bench`: runs every benchmark and prints its table (not part of `make test`).

Each benchmark prints its own table and returns its headline figures; a summary of those ends
the run. A benchmark that fails (e.g. P5/P8 without the local Postgres and Redis) is reported
and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (
    cpu_budget,
    login_cpu,
    p1_token_cache,
    p2_cached_auth,
    p3_forwarded,
    p4_api_keys,
    p5_p8_auth,
    p6_crypto_batch,
    p7_audit_ingest,
    p10_peer,
    p11_visitors,
    p12_webhooks,
)
from bench.common import print_table

BENCHMARKS = [
    p1_token_cache,
    p2_cached_auth,
    p3_forwarded,
    p4_api_keys,
    p5_p8_auth,
    p6_crypto_batch,
    p7_audit_ingest,
    cpu_budget,
    login_cpu,
    p10_peer,
    p11_visitors,
    p12_webhooks,
]


def main() -> int:
    figures: dict[str, float] = {}
    failed: list[str] = []
    for benchmark in BENCHMARKS:
        name = benchmark.__name__.rsplit(".", 1)[-1]
        try:
            figures.update(benchmark.main())
        except Exception:
            traceback.print_exc()
            failed.append(name)
    rows = [(key, f"{value:.2f}") for key, value in figures.items()]
    rows += [(name, "FAILED (see above)") for name in failed]
    print_table("Summary (shared/PERFORMANCE.md targets are in each table above)", rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
