"""The binary conv kernels built for AArch64 (cross-compiled, run under qemu-user) give the
same bits as every x86 path. Skipped where the cross toolchain is missing (it is not in CI:
`apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user` to run it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[2] / "agent" / "biagent" / "kernels"
HARNESS = Path(__file__).with_name("crosscheck_bconv.c")


@pytest.mark.skipif(
    not (shutil.which("gcc") and shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")),
    reason="needs gcc, aarch64-linux-gnu-gcc and qemu-aarch64",
)
def test_aarch64_build_matches_every_x86_path(tmp_path):
    def build_and_run(cc: str, runner: list[str]) -> list[str]:
        exe = tmp_path / cc
        subprocess.run(
            [
                cc,
                "-O3",
                "-std=c11",
                "-ffp-contract=off",
                "-fopenmp",
                f"-I{KERNELS}",
                str(HARNESS),
                str(KERNELS / "bconv.c"),
                "-o",
                str(exe),
                "-static",
                "-lm",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        out = subprocess.run(
            [*runner, str(exe)], check=True, capture_output=True, text=True, timeout=300
        ).stdout
        return [line.split("sum", 1)[1].strip() for line in out.splitlines()]

    x86 = build_and_run("gcc", [])
    arm = build_and_run("aarch64-linux-gnu-gcc", ["qemu-aarch64"])
    assert len(x86) >= 2 and len(arm) == 2  # every x86 path here; NEON and portable there
    assert len(set(x86)) == 1 and set(arm) == set(x86), (x86, arm)
