"""The kernels built for AArch64 (cross-compiled, run under qemu-user) give the same bits as
every x86 path: the binary conv on every ISA, and whole executor plans (kernels/graph.c with
every kernel it calls) for a CNN, a 1-D model, a point cloud with T-Nets and a token model,
against the Python extension's own run. `.ci/run` installs the toolchain from Debian
(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user); elsewhere the test is skipped."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

KERNELS = Path(__file__).resolve().parents[2] / "agent" / "biagent" / "kernels"
HARNESS = Path(__file__).with_name("crosscheck_bconv.c")


CROSS = pytest.mark.skipif(
    not (shutil.which("gcc") and shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")),
    reason="needs gcc, aarch64-linux-gnu-gcc and qemu-aarch64",
)
GRAPH_HARNESS = Path(__file__).with_name("crosscheck_graph.c")
GRAPH_SOURCES = ("graph.c", "bconv.c", "fpops.c", "xnor_gemm.c")


def _build(cc: str, harness: Path, sources: tuple[str, ...], out: Path) -> Path:
    subprocess.run(
        [cc, "-O3", "-std=c11", "-ffp-contract=off", "-fopenmp", f"-I{KERNELS}", str(harness)]
        + [str(KERNELS / name) for name in sources]
        + ["-o", str(out), "-static", "-lm"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@CROSS
def test_aarch64_build_matches_every_x86_path(tmp_path):
    def build_and_run(cc: str, runner: list[str]) -> list[str]:
        exe = _build(cc, HARNESS, ("bconv.c",), tmp_path / cc)
        out = subprocess.run(
            [*runner, str(exe)], check=True, capture_output=True, text=True, timeout=300
        ).stdout
        return [line.split("sum", 1)[1].strip() for line in out.splitlines()]

    x86 = build_and_run("gcc", [])
    arm = build_and_run("aarch64-linux-gnu-gcc", ["qemu-aarch64"])
    assert len(x86) >= 2 and len(arm) == 2  # every x86 path here; NEON and portable there
    assert len(set(x86)) == 1 and set(arm) == set(x86), (x86, arm)


@CROSS
def test_the_whole_extension_links_for_aarch64(tmp_path):
    # Every C function the Python glue calls must exist on AArch64 too: an x86-only one makes
    # the extension fail to import on every ARM board (the custom runtime then runs numpy). The
    # emulated board found fp_fma_ceiling so; this catches the next one without emulation.
    import sysconfig

    objects = []
    for name in ("module", *(n.removesuffix(".c") for n in GRAPH_SOURCES)):
        obj = tmp_path / f"{name}.o"
        subprocess.run(
            ["aarch64-linux-gnu-gcc", "-O3", "-std=c11", "-ffp-contract=off", "-fopenmp", "-fPIC"]
            + [f"-I{sysconfig.get_paths()['include']}", "-c", str(KERNELS / f"{name}.c"), "-o", str(obj)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        objects.append(str(obj))
    lib = tmp_path / "_xnor.so"
    subprocess.run(
        ["aarch64-linux-gnu-gcc", "-shared", "-fopenmp", *objects, "-o", str(lib), "-lm"], check=True
    )
    listing = subprocess.run(
        ["aarch64-linux-gnu-nm", "-u", str(lib)], capture_output=True, text=True, check=True
    )
    strong = [line.split()[-1] for line in listing.stdout.splitlines() if line.split()[-2] == "U"]
    # what Python, libgomp, libc and libm provide at load (the last two versioned)
    ours = [u for u in strong if "@" not in u and not u.startswith(("Py", "_Py", "GOMP_", "omp_"))]
    assert not ours, f"called from the extension, defined nowhere on AArch64: {ours}"


@pytest.fixture(scope="module")
def graph_runners(tmp_path_factory) -> list[list[str]]:
    """The executor harness built for x86 (run directly) and AArch64 (under qemu), once."""
    where = tmp_path_factory.mktemp("graph_harness")
    x86 = _build("gcc", GRAPH_HARNESS, GRAPH_SOURCES, where / "x86")
    arm = _build("aarch64-linux-gnu-gcc", GRAPH_HARNESS, GRAPH_SOURCES, where / "arm")
    return [[str(x86)], ["qemu-aarch64", str(arm)]]


def _plan_file(path: Path, tables, inputs: list[np.ndarray]) -> None:
    """A plan as crosscheck_graph.c reads it (see its header)."""
    i64 = lambda *v: np.asarray(v, "<i8").tobytes()  # noqa: E731
    parts = [i64(len(tables.steps), len(tables.tensors), tables.arena, len(inputs), len(tables.output_bytes))]
    parts += [
        np.ascontiguousarray(tables.steps, "<i8").tobytes(),
        np.ascontiguousarray(tables.floats, "<f8").tobytes(),
    ]
    for t in tables.tensors:
        parts += [i64(t.itemsize, t.size), np.ascontiguousarray(t).tobytes()]
    for x in inputs:
        parts += [i64(x.nbytes), np.ascontiguousarray(x).tobytes()]
    parts += [i64(b) for b in tables.output_bytes]
    path.write_bytes(b"".join(parts))


def _token_model():
    from tests.helpers import TinyTransformer

    return TinyTransformer(), torch.randint(0, 50, (2, 6))


def _binary_cnn():
    """2-D binary convs and no full-precision conv."""
    from torch import nn

    net = nn.Sequential(
        nn.Conv2d(8, 70, 3, padding=1, bias=False),
        nn.BatchNorm2d(70),
        nn.Hardtanh(),
        nn.Conv2d(70, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 10),
    )
    return net, torch.randn(2, 8, 9, 9)


@CROSS
@pytest.mark.parametrize(
    ("arch", "algo"),
    [
        ("binary_cnn", "xnor"),
        ("resnet20", "bireal"),
        ("dfsmn", "reactnet"),
        ("pointnet", "xnorpp"),
        ("tokens", "bnn"),
    ],
)
def test_aarch64_executor_matches_the_extension_bit_for_bit(arch, algo, tmp_path, graph_runners, monkeypatch):
    """resnet20 is planned as a board plans it: its FP convs on the GEMM (AVX-512 here, plain C
    with fmaf there), since the direct stem kernel is x86 only."""
    import bimodels
    from biagent.kernels import _xnor
    from biagent.runtimes.custom import KernelSettings, load_artifact
    from biagent.runtimes.custom.executor import NativeGraph, plan_tables

    monkeypatch.setattr(_xnor, "conv2d_direct_supported", lambda: False)
    torch.manual_seed(0)
    fp_layers = None
    if arch == "tokens":
        net, x = _token_model()
    elif arch == "binary_cnn":
        (net, x), fp_layers = _binary_cnn(), ["6"]
    else:
        net = bimodels.create_model(arch)
        x = bimodels.example_input(arch, 2, seed=1)
        if arch == "pointnet":
            x = x[:, :, :128].contiguous()
    model = bimodels.binarize(
        bimodels.trained_like_norms(net), algo, example_input=x[:1], fp_layers=fp_layers
    )
    graph = load_artifact(
        bimodels.export(model.eval(), "custom", x[:1]), KernelSettings(threads=2), fuse=True
    )
    tables = plan_tables(graph, 2)
    inputs = [x.numpy()]
    plan = tmp_path / "plan.bin"
    _plan_file(plan, tables, inputs)
    want = NativeGraph(graph, "auto", 2).run(inputs)[0].tobytes().hex()
    for runner in graph_runners:
        out = subprocess.run([*runner, str(plan)], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{runner[0]}: {out.stdout[:500]} {out.stderr[:500]}"
        assert out.stdout.strip() == want, f"{runner[0]}: outputs differ from the extension's"
