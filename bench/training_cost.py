"""What a `bihost bench` scale costs on this machine, before committing hours to it.

    python bench/training_cost.py [--scale default] [--task ...] [--batches 12] [--device cpu] [--json]

For each task and each architecture the scale trains, times `--batches` training steps of
the full-precision model and of each algorithm's binarized copy (after one warm-up step),
and extrapolates with the task's recipe: FP epochs x FP step time x steps per epoch, plus,
per algorithm, its epochs x its step time x steps per epoch. Evaluation, batch-norm
re-estimation and checkpoints are not counted (a few percent at the default scale). The
estimate is only as good as the machine is quiet: run it alone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))


def step_seconds(task, model, split, batch_size: int, batches: int, device) -> float:
    import torch

    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(batches + 1):
        x, y = split.batch(torch.randint(0, len(split), (batch_size,), generator=gen))
        started = time.perf_counter()
        loss = task.loss(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step pays for allocation and kernel selection
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="default")
    parser.add_argument("--task", default=None, help="comma-separated tasks (default: all)")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    import bimodels
    from bimodels.binarize import binarize, set_epoch
    from bimodels.tasks import get_task, list_tasks
    from bimodels.training import resolve_device

    device = resolve_device(args.device)
    rows = []
    for name in args.task.split(",") if args.task else list_tasks():
        task = get_task(name)
        config = task.config(args.scale)
        data = task.load(args.scale, None, seed=0)
        steps = math.ceil(len(data.train) / config.batch_size)
        for arch in task.default_archs(args.scale):
            torch.manual_seed(0)
            fp = task.create_model(arch, data.num_classes)
            fp_step = step_seconds(task, fp, data.train, config.batch_size, args.batches, device)
            row = {
                "task": name,
                "arch": arch,
                "train_samples": len(data.train),
                "steps_per_epoch": steps,
                "fp_epochs": config.fp_epochs,
                "bin_epochs": config.bin_epochs,
                "fp_step_s": fp_step,
                "fp_s": fp_step * steps * config.fp_epochs,
                "algorithms": {},
            }
            example = data.train.batch(torch.arange(1))[0]
            for algo in bimodels.list_algorithms():
                model = binarize(fp.cpu(), algo, example_input=example)
                set_epoch(model, 0, max(1, config.bin_epochs))
                s = step_seconds(task, model, data.train, config.batch_size, args.batches, device)
                row["algorithms"][algo] = {
                    "step_s": s,
                    "total_s": s * steps * config.bin_epochs,
                    "step_vs_fp": s / fp_step,
                }
            row["total_s"] = row["fp_s"] + sum(a["total_s"] for a in row["algorithms"].values())
            rows.append(row)
            print(
                f"{name}/{arch}: FP step {fp_step * 1e3:.0f} ms, binarized steps "
                + ", ".join(f"{a} {v['step_vs_fp']:.2f}x" for a, v in row["algorithms"].items())
                + f"; about {row['total_s'] / 60:.0f} min at the {args.scale} scale",
                file=sys.stderr,
                flush=True,
            )
    total = sum(r["total_s"] for r in rows)
    if args.json:
        print(
            json.dumps(
                {
                    "scale": args.scale,
                    "device": str(device),
                    "threads": torch.get_num_threads(),
                    "rows": rows,
                    "total_s": total,
                },
                indent=2,
            )
        )
    else:
        for r in rows:
            print(f"{r['task']:<28} {r['arch']:<18} {r['total_s'] / 60:7.1f} min")
        print(
            f"{'all':<47} {total / 60:7.1f} min ({total / 3600:.2f} h) on {device}, "
            f"{torch.get_num_threads()} threads"
        )


if __name__ == "__main__":
    main()
