"""Regenerate the committed gRPC stubs: `python protos/generate.py` (needs grpcio-tools).

Stubs are committed so a board installs the agent without a compiler; a test fails when
they no longer match the .proto files.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = sorted(p.relative_to(HERE).as_posix() for p in (HERE / "biproto").glob("*.proto"))


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{HERE}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
