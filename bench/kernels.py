"""Binary conv layers of ResNet-18: custom kernels vs LCE vs ONNX Runtime FP32, side by side.

    python bench/kernels.py [--threads 1,2] [--rounds 15] [--json]

Each shape is one 3x3, stride-1, zero-padded binary conv (BNN) at batch 1, exported to
each runtime's format and run through the agent's own runtime classes (the timed call is
the runtime's invoke: for custom that includes sign + pack, the correction and the float
output). Every (runtime, thread count) is its own process, timed in interleaved rounds
(bench/timing.py), so all ratios come from one run.

Reported: medians, GOPS-equivalent (2 * MACs / time), custom's speedup over each other
runtime at the same thread count, its share of this CPU's popcount ceiling (the
micro-kernel alone on L1-resident tiles, run on as many threads at once), custom's scaling
from the first thread count to each further one, and the ceiling's own scaling: what this
machine gives a pure popcount loop on more cores (a shared or throttled host gives < 2x).
Then ResNet-18's full-precision stem (3 -> 64, 7x7, stride 2, at 224x224) the same way,
against the FMA ceiling (independent vector FMA chains in registers, fpops.c).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import add_ratios, agent_spec, fma_ceiling, popcount_ceiling, run_contenders, workdir  # noqa: E402

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]  # (channels, spatial size)
RUNTIMES = {"custom": "custom", "larq": "lce", "onnxruntime": "onnx"}


def layer_model(channels: int):
    import torch
    from torch import nn

    import bimodels

    torch.manual_seed(0)
    fp = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False))
    return bimodels.binarize(fp, "bnn", fp_layers=[]).eval()


def time_runtimes(model, x, counts: list[int], rounds: int) -> dict[str, float]:
    """`model` exported to every runtime's format and timed side by side (bench/timing.py)."""
    import bimodels

    with workdir() as tmp:
        specs = {
            rt: agent_spec(rt, fmt, bimodels.export(model, fmt, x), x.numpy(), Path(tmp), rt)
            for rt, fmt in RUNTIMES.items()
        }
        return run_contenders(specs, counts, Path(tmp), rounds)


def add_rates(row: dict, macs: int, unit: str) -> None:
    """Each runtime's `{rt}_{unit}`: 2 * MACs per second, in billions (None where it did not run)."""
    for rt in RUNTIMES:
        ms = row[f"{rt}_ms"]
        row[f"{rt}_{unit}"] = None if ms is None else 2 * macs / (ms / 1e3) / 1e9


STEM = (3, 64, 7, 2, 3, 224)  # cin, cout, kernel, stride, padding, input size


def stem_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    cin, cout, k, s, p, _ = STEM
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)).eval()


def measure_stem(counts: list[int], rounds: int) -> list[dict]:
    """The FP stem on custom (the direct AVX-512 kernel, or im2col + fp_gemm), LCE and ORT."""
    import torch

    cin, cout, k, s, p, size = STEM
    out = (size + 2 * p - k) // s + 1
    macs = cout * cin * k * k * out * out
    ceilings = {t: fma_ceiling(threads=t) for t in counts}
    medians = time_runtimes(stem_model(), torch.randn(1, cin, size, size), counts, rounds)
    rows = []
    for t in counts:
        row = {"shape": f"stem {cin}->{cout} {k}x{k}/{s} @ {size}x{size}", "macs": macs, "threads": t}
        row["fma_ceiling_gflops"] = 2 * ceilings[t] / 1e9
        add_ratios(row, medians, list(RUNTIMES), t, counts)
        add_rates(row, macs, "gflops")
        if row["custom_ms"]:
            row["fma_fraction"] = macs / (row["custom_ms"] / 1e3) / ceilings[t]
        rows.append(row)
    return rows


def measure(counts: list[int], rounds: int) -> list[dict]:
    import torch

    from biagent import kernels

    ceilings = {t: popcount_ceiling(threads=t) for t in counts}
    rows = []
    for channels, size in SHAPES:
        model = layer_model(channels)
        x = torch.randn(1, channels, size, size)
        macs = channels * channels * 9 * size * size
        medians = time_runtimes(model, x, counts, rounds)
        for t in counts:
            row = {
                "shape": f"{channels}->{channels} @ {size}x{size}",
                "macs": macs,
                "threads": t,
                "kernel": kernels.info().get("bconv"),
                "ceiling_gmacs": ceilings[t] / 1e9,
                "ceiling_scaling": ceilings[t] / ceilings[counts[0]],
            }
            add_ratios(row, medians, list(RUNTIMES), t, counts)
            add_rates(row, macs, "gops")
            if row["custom_ms"]:
                row["ceiling_fraction"] = macs / (row["custom_ms"] / 1e3) / ceilings[t]
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    rows = measure(counts, args.rounds)
    stem = measure_stem(counts, args.rounds)
    if args.json:
        print(json.dumps({"binary_layers": rows, "stem": stem}, indent=2))
        return
    nan = float("nan")
    for t in counts:
        r = next(r for r in rows if r["threads"] == t)
        print(
            f"popcount ceiling ({r['kernel']} micro-kernel, L1 tiles, {t} thread(s) at once): "
            f"{r['ceiling_gmacs']:.0f} G binary MAC/s (x{r['ceiling_scaling']:.2f} vs {counts[0]}t)"
        )
    for r in rows:
        scaling = r.get(f"custom_scaling_vs_{counts[0]}t")
        print(
            f"{r['threads']}t {r['shape']:>18}  custom {r['custom_ms']:.3f} ms ({r['custom_gops']:.0f} GOPS, "
            f"{100 * r.get('ceiling_fraction', nan):.0f}% of ceiling)  larq {r['larq_ms'] or nan:.3f} ms  "
            f"onnxruntime {r['onnxruntime_ms'] or nan:.3f} ms  x{r.get('custom_vs_larq', nan):.2f} vs larq  "
            f"x{r.get('custom_vs_onnxruntime', nan):.2f} vs ORT"
            + (f"  x{scaling:.2f} vs {counts[0]}t" if scaling else "")
        )
    for r in stem:
        print(
            f"{r['threads']}t {r['shape']}  custom {r['custom_ms']:.3f} ms ({r['custom_gflops']:.0f} GFLOP/s, "
            f"{100 * r.get('fma_fraction', nan):.0f}% of the {r['fma_ceiling_gflops']:.0f} GFLOP/s FMA ceiling)  "
            f"larq {r['larq_ms'] or nan:.3f} ms  onnxruntime {r['onnxruntime_ms'] or nan:.3f} ms  "
            f"x{r.get('custom_vs_onnxruntime', nan):.2f} vs ORT"
        )


if __name__ == "__main__":
    main()
