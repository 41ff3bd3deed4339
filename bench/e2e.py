"""Whole networks: custom runtime vs LCE vs ONNX Runtime FP32 vs torch FP32, side by side.

    python bench/e2e.py [--threads 1,2] [--algo bnn] [--rounds 8] [--json]

Networks at batch 1: resnet18 (224x224), resnet20 and vgg_small (32x32). The binarized
network (`--algo`) is exported to the custom and LCE formats and run by the agent's own
runtime classes (custom twice: the whole-graph executor, and `custom_pernode`, the same
kernels called node by node from Python); the FP32 baselines are the same architecture without binarization, run
by ONNX Runtime and by torch. Every (contender, thread count) is its own process, timed
in interleaved rounds (bench/timing.py), so all ratios come from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import add_ratios, agent_spec, run_contenders, torch_spec, workdir  # noqa: E402

NETWORKS = [("resnet18", 224), ("resnet20", 32), ("vgg_small", 32)]
# custom: the whole-graph executor; custom_pernode: the same kernels called node by node from Python
CONTENDERS = ("custom", "custom_pernode", "larq", "onnxruntime_fp32", "torch_fp32")


def measure(counts: list[int], algo: str, rounds: int) -> list[dict]:
    import torch

    import bimodels
    from biagent import kernels

    rows = []
    for arch, size in NETWORKS:
        torch.manual_seed(0)
        fp = bimodels.create_model(arch).eval()
        x = torch.randn(1, 3, size, size)
        binary = bimodels.binarize(bimodels.create_model(arch), algo).eval()
        with workdir() as tmp:
            d = Path(tmp)
            specs = {
                "custom": agent_spec(
                    "custom", "custom", bimodels.export(binary, "custom", x), x.numpy(), d, "custom"
                ),
                "custom_pernode": agent_spec(
                    "custom",
                    "custom",
                    bimodels.export(binary, "custom", x),
                    x.numpy(),
                    d,
                    "custom_pernode",
                    env={"BIAGENT_CUSTOM_EXECUTOR": "python"},
                ),
                "larq": agent_spec("larq", "lce", bimodels.export(binary, "lce", x), x.numpy(), d, "larq"),
                "onnxruntime_fp32": agent_spec(
                    "onnxruntime", "onnx", bimodels.export(fp, "onnx", x), x.numpy(), d, "ort"
                ),
                "torch_fp32": torch_spec(arch, x.numpy(), d, "torch"),
            }
            medians = run_contenders(specs, counts, d, rounds, per_round=3)
        for t in counts:
            row = {
                "network": f"{arch} @ {size}",
                "algo": algo,
                "threads": t,
                "kernel": kernels.info().get("bconv"),
            }
            add_ratios(row, medians, list(CONTENDERS), t, counts)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--algo", default="bnn")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    rows = measure(counts, args.algo, args.rounds)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    nan = float("nan")
    for r in rows:
        ratios = "  ".join(f"x{r.get(f'custom_vs_{o}', nan):.2f} vs {o}" for o in CONTENDERS[1:])
        times = "  ".join(f"{o} {r[f'{o}_ms'] or nan:.2f} ms" for o in CONTENDERS)
        scaling = r.get(f"custom_scaling_vs_{counts[0]}t")
        print(
            f"{r['threads']}t {r['algo']} {r['network']:>16}  {times}  |  {ratios}"
            + (f"  | custom x{scaling:.2f} vs {counts[0]}t" if scaling else "")
        )


if __name__ == "__main__":
    main()
