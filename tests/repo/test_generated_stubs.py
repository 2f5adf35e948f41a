"""The stubs in libs/api are exactly what tools/gen_protos.py makes from protos/ (not stale)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != ".generated" and "__pycache__" not in p.parts
    }


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = _files(tmp_path / "palisade_api")
    installed = _files(ROOT / "libs" / "api" / "src" / "palisade_api")
    assert sorted(fresh) == sorted(installed), "run `make gen`: the stub set changed"
    stale = [name for name in fresh if fresh[name] != installed[name]]
    assert stale == [], f"run `make gen`: stale stubs {stale}"


def test_every_proto_declares_a_versioned_palisade_package() -> None:
    for proto in (ROOT / "protos").rglob("*.proto"):
        parts = proto.relative_to(ROOT / "protos").parts  # palisade/<svc>/v1/x.proto
        expected = f"package {'.'.join(parts[:-1])};"
        assert expected in proto.read_text(), f"{proto} must declare `{expected}`"
