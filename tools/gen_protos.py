"""Generate Python stubs (with type stubs) for every proto under protos/.

Protos live at protos/palisade/<svc>/v1/*.proto with proto package palisade.<svc>.v1. Python
module paths follow file paths, so generating them as-is would put modules at palisade.<svc>.v1
and collide with the service packages (palisade.crypto, ...). We therefore stage a copy under
palisade_api/<svc>/v1/ with imports rewritten to match, and generate from that: the proto
package names (what goes on the wire and in reflection) stay palisade.<svc>.v1.

Usage: python tools/gen_protos.py [--out DIR]   (default: libs/api/src)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from google.api import annotations_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DEFAULT_OUT = ROOT / "libs" / "api" / "src"
IMPORT_RE = re.compile(r'^(import\s+(?:public\s+|weak\s+)?")palisade/', re.MULTILINE)
PACKAGE_DOC = '"""Generated protobuf and gRPC stubs (see tools/gen_protos.py). Do not edit."""\n'


def _stage(staging: Path) -> list[str]:
    sources = sorted(PROTO_ROOT.glob("palisade/**/*.proto"))
    rel_paths: list[str] = []
    for src in sources:
        rel = Path("palisade_api") / src.relative_to(PROTO_ROOT / "palisade")
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(IMPORT_RE.sub(r"\1palisade_api/", src.read_text()))
        rel_paths.append(rel.as_posix())
    return rel_paths


def generate(out_dir: Path) -> None:
    """Regenerate every stub into out_dir/palisade_api, replacing what was there."""
    package_dir = out_dir / "palisade_api"
    if package_dir.exists():
        shutil.rmtree(package_dir)
    package_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        rel_paths = _stage(staging)
        well_known = Path(protoc.__file__).parent / "_proto"
        # google/api/{annotations,http}.proto; their Python modules ship in the same package.
        googleapis = Path(annotations_pb2.__file__).parents[2]
        args = [
            "grpc_tools.protoc",
            f"-I{staging}",
            f"-I{well_known}",
            f"-I{googleapis}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--mypy_out={out_dir}",
            f"--mypy_grpc_out={out_dir}",
            *rel_paths,
        ]
        # The mypy plugins are console scripts next to this interpreter.
        bin_dir = str(Path(sys.executable).parent)
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
    for directory in [package_dir, *[p for p in package_dir.rglob("*") if p.is_dir()]]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text(PACKAGE_DOC)
        (directory / "py.typed").touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
