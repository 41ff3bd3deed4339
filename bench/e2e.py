"""Whole networks: custom runtime vs LCE vs ONNX Runtime FP32 vs torch FP32, side by side.

    python bench/e2e.py [--threads 1,2] [--algo bnn] [--rounds 8] [--json]

Every registered architecture at its registry input size (the 224x224 ImageNet nets other
than resnet18 at 112x112 or 128x128), batch 1 by default (`--batch N` for throughput). The binarized
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

# the registry's input sizes, except where the paper's 224x224 ImageNet nets make a run too long
# for this machine; --networks picks others (any registered architecture). Bi-Real Net and
# ReActNet need a side divisible by 32 (their average-pool shortcuts): 128, not 112.
DEFAULT_SIZES = {"resnet34": (3, 112, 112), "birealnet18": (3, 128, 128), "reactnet": (3, 128, 128)}
# custom: the whole-graph executor; custom_pernode: the same kernels called node by node from Python
CONTENDERS = ("custom", "custom_pernode", "larq", "onnxruntime_fp32", "torch_fp32")


def _input(arch: str, batch: int):
    import torch

    from bimodels.architectures import ARCHITECTURES

    shape = DEFAULT_SIZES.get(arch, tuple(ARCHITECTURES.get(arch).input_shape))
    if arch.startswith("bert"):
        return torch.randint(0, 1000, (batch, *shape))
    return torch.randn(batch, *shape)


def _specs(arch: str, algo: str, x, d: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Each contender that can run the network, and why each other cannot."""
    import torch

    import bimodels

    torch.manual_seed(0)
    fp = bimodels.create_model(arch).eval()
    binary = bimodels.binarize(bimodels.create_model(arch), algo, example_input=x[:1]).eval()
    xs = x.numpy()
    specs: dict[str, dict] = {}
    refused: dict[str, str] = {}

    def add(name: str, build) -> None:
        try:
            specs[name] = build()
        except Exception as exc:  # an exporter's refusal: reported, never a crash of the bench
            refused[name] = str(exc).splitlines()[0][:120]

    add(
        "custom",
        lambda: agent_spec("custom", "custom", bimodels.export(binary, "custom", x), xs, d, "custom"),
    )
    if "custom" in specs:
        add(
            "custom_pernode",
            lambda: dict(specs["custom"], env={"BIAGENT_CUSTOM_EXECUTOR": "python"}),
        )
    if len(x) == 1:
        add("larq", lambda: agent_spec("larq", "lce", bimodels.export(binary, "lce", x), xs, d, "larq"))
    else:  # the LCE exporter writes batch-1 models (TFLite shapes are fixed)
        refused["larq"] = f"LCE artifacts are exported at batch 1, not {len(x)}"
    add(
        "onnxruntime_fp32",
        lambda: agent_spec("onnxruntime", "onnx", bimodels.export(fp, "onnx", x), xs, d, "ort"),
    )
    specs["torch_fp32"] = torch_spec(arch, xs, d, "torch")
    return specs, refused


def measure(counts: list[int], algo: str, rounds: int, networks: list[str], batch: int = 1) -> list[dict]:
    from biagent import kernels

    rows = []
    for arch in networks:
        x = _input(arch, batch)
        with workdir() as tmp:
            d = Path(tmp)
            specs, refused = _specs(arch, algo, x, d)
            medians = run_contenders(specs, counts, d, rounds, per_round=3)
        for t in counts:
            row = {
                "network": f"{arch} {tuple(x.shape[1:])}",
                "algo": algo,
                "batch": batch,
                "threads": t,
                "kernel": kernels.info().get("bconv"),
                "refused": refused,
            }
            add_ratios(row, medians, list(CONTENDERS), t, counts)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--algo", default="bnn")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument(
        "--batch", type=int, default=1, help="inputs per call (throughput beside batch-1 latency)"
    )
    parser.add_argument(
        "--networks", default="", help="comma-separated architectures (default: every registered one)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    from bimodels.architectures import ARCHITECTURES

    networks = args.networks.split(",") if args.networks else list(ARCHITECTURES.names())
    rows = measure(counts, args.algo, args.rounds, networks, args.batch)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    nan = float("nan")
    for r in rows:
        ratios = "  ".join(f"x{r.get(f'custom_vs_{o}', nan):.2f} vs {o}" for o in CONTENDERS[1:])
        times = "  ".join(f"{o} {r.get(f'{o}_ms') or nan:.2f} ms" for o in CONTENDERS)
        scaling = r.get(f"custom_scaling_vs_{counts[0]}t")
        print(
            f"{r['threads']}t b{r['batch']} {r['algo']} {r['network']:>28}  {times}  |  {ratios}"
            + (f"  | custom x{scaling:.2f} vs {counts[0]}t" if scaling else "")
        )
        if r["threads"] == counts[0]:
            for name, why in r["refused"].items():
                print(f"      {name} cannot run {r['network']}: {why}")


if __name__ == "__main__":
    main()
