"""Binary conv layers of ResNet-18: custom kernels vs LCE vs ONNX Runtime FP32, side by side.

    python bench/kernels.py [--threads 1] [--repeats 20] [--json]

Each shape is one 3x3, stride-1, zero-padded binary conv (BNN) at batch 1, exported to
each runtime's format and run through the agent's own runtime classes (the timed call is
the runtime's invoke). Ratios are measured in the same run, on the same thread count.
GOPS-equivalent = 2 * MACs / time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]  # (channels, spatial size)
RUNTIMES = {"custom": "custom", "larq": "lce", "onnxruntime": "onnx"}


def layer_model(channels: int):
    import torch
    from torch import nn

    import bimodels

    torch.manual_seed(0)
    fp = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False))
    return bimodels.binarize(fp, "bnn", fp_layers=[]).eval()


def median_invoke(runtime: str, data: bytes, fmt: str, x, threads: int, repeats: int) -> float | None:
    from biagent.runtimes import get_runtime

    cls = get_runtime(runtime)
    if not cls.describe().installed:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"m.{fmt}"
        path.write_bytes(data)
        model = cls().load(path, threads)
        model.set_inputs([x])
        model.invoke()
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            model.invoke()
            samples.append(time.perf_counter() - t)
        model.close()
    return statistics.median(samples)


def main() -> None:
    import bimodels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for channels, size in SHAPES:
        model = layer_model(channels)
        x = __import__("torch").randn(1, channels, size, size)
        macs = channels * channels * 9 * size * size
        row = {"shape": f"{channels}->{channels} @ {size}x{size}", "macs": macs, "threads": args.threads}
        for runtime, fmt in RUNTIMES.items():
            data = bimodels.export(model, fmt, x)
            t = median_invoke(runtime, data, fmt, x.numpy(), args.threads, args.repeats)
            row[f"{runtime}_ms"] = None if t is None else t * 1e3
            row[f"{runtime}_gops"] = None if t is None else 2 * macs / t / 1e9
        for other in ("larq", "onnxruntime"):
            if row.get("custom_ms") and row.get(f"{other}_ms"):
                row[f"custom_vs_{other}"] = row[f"{other}_ms"] / row["custom_ms"]
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['shape']:>20}  custom {r['custom_ms']:.2f} ms ({r['custom_gops']:.0f} GOPS)  "
              f"larq {r['larq_ms'] or float('nan'):.2f} ms  onnxruntime {r['onnxruntime_ms']:.2f} ms  "
              f"custom x{r.get('custom_vs_larq', float('nan')):.2f} vs larq, x{r.get('custom_vs_onnxruntime', float('nan')):.2f} vs ORT")


if __name__ == "__main__":
    main()
