"""The training-consumption grid on the local process pool and on Ray, side by side, in one run.

    python bench/grid_executors.py [--scale default] [--algo bnn] [--settings 4] [--workers 2] [--json]

Runs the same grid jobs (FP and each `--algo`, under the first `--settings` of the grid's 8)
first on `LocalPool`, then on a Ray started on this machine with as many CPUs, and prints each
executor's wall time, the mean training seconds per epoch its jobs measured, and their ratios.
Both executors run the same seeded jobs, so the accuracies must agree exactly; the script
says whether they do. Nothing is filed in a results store. Run it on a quiet machine: the
ratio is only meaningful when nothing else competes for the cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "host"), str(ROOT / "models"), str(ROOT / "agent"), str(ROOT / "protos")]


def run_on(executor, jobs) -> dict:
    from bihost.executors import JobCrashed
    from bihost.grid import run_grid_job

    started = time.perf_counter()
    outcomes = {}
    for job, outcome in executor.run(run_grid_job, jobs):
        if isinstance(outcome, JobCrashed) or not outcome.ok:
            raise SystemExit(
                f"{job.algorithm} {job.setting} failed on {executor.describe()}: {outcome.error}"
            )
        outcomes[(job.algorithm, job.setting)] = outcome
    wall = time.perf_counter() - started
    per_epoch = [o.seconds_per_epoch for o in outcomes.values()]
    return {
        "executor": executor.describe(),
        "wall_seconds": wall,
        "jobs": len(outcomes),
        "mean_seconds_per_epoch": sum(per_epoch) / len(per_epoch),
        "metrics": {f"{a}/{s}": o.metric for (a, s), o in sorted(outcomes.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="default", choices=["quick", "default", "paper"])
    parser.add_argument("--algo", default="bnn", help="comma-separated algorithms besides FP")
    parser.add_argument("--settings", type=int, default=4, help="how many of the grid's 8 settings")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from bihost.executors import LocalPool, RayCluster
    from bihost.grid import SETTINGS, grid_jobs, setting_name

    chosen = {setting_name(*s) for s in SETTINGS[: args.settings]}
    jobs = [j for j in grid_jobs(args.scale, args.algo.split(","), 0, None, threads=1) if j.setting in chosen]
    local = run_on(LocalPool(args.workers), jobs)
    ray = run_on(RayCluster(None, args.workers), jobs)
    same = local["metrics"] == ray["metrics"]
    report = {
        "scale": args.scale,
        "arch": jobs[0].arch,
        "jobs": len(jobs),
        "workers": args.workers,
        "local": local,
        "ray": ray,
        "ray_over_local_wall": ray["wall_seconds"] / local["wall_seconds"],
        "ray_over_local_seconds_per_epoch": ray["mean_seconds_per_epoch"] / local["mean_seconds_per_epoch"],
        "same_accuracies": same,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{len(jobs)} grid jobs ({jobs[0].arch}, {args.scale} scale), {args.workers} workers, 1 thread each"
    )
    for r in (local, ray):
        print(
            f"  {r['executor']:<40} wall {r['wall_seconds']:7.1f} s   {r['mean_seconds_per_epoch']:6.2f} s/epoch"
        )
    print(
        f"  Ray / local: wall x{report['ray_over_local_wall']:.2f}, "
        f"seconds per epoch x{report['ray_over_local_seconds_per_epoch']:.2f}; "
        f"accuracies {'identical' if same else 'DIFFER'}"
    )
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
