"""Side-by-side timing for the benchmarks: one process per contender, interleaved rounds, medians.

Why processes: ONNX Runtime, torch (its own OpenMP), and our kernels (libgomp) each keep a
thread pool that spins for a while after a call; in one process at 2 threads on a 2-core
machine they fight over the cores and every number is wrong. Each contender therefore
lives in its own process with the environment the agent's worker would give it
(biagent.worker.thread_env: thread counts, OpenBLAS kernels), and runs only when told.

Why rounds: this machine is shared and noisy, so contenders run in alternating rounds (a
few calls each, rotating order) and are compared by medians; a burst of noise then hits
all of them instead of whichever happened to run during it.

    python bench/timing.py --serve SPEC.json    (the contender side; speaks JSON lines)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class Contender:
    """One runtime, loaded in its own process; `run(n)` times n calls there."""

    def __init__(self, name: str, spec: dict, threads: int, workdir: Path):
        from biagent.worker import thread_env

        self.name, self.threads = name, threads
        path = workdir / f"{name}.spec.json"
        path.write_text(json.dumps(dict(spec, threads=threads)))
        env = thread_env(threads, spec.get("runtime"))
        env.update(spec.get("env", {}))
        env["PYTHONPATH"] = f"{ROOT}:{env.get('PYTHONPATH', '')}"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(path)],
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.available = self._reply()["ready"]

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"contender {self.name} exited (status {self.proc.wait()})")
        return json.loads(line)

    def run(self, n: int, seconds: float = 0.0) -> list[float]:
        """Durations of at least n calls, and of calls for at least `seconds` in all."""
        self.proc.stdin.write(f"{n} {seconds}\n")
        self.proc.stdin.flush()
        return self._reply()["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


TURN_SECONDS = 0.02  # a contender's turn lasts at least this long (and at least per_round calls)


def interleaved_medians(
    contenders: list[Contender], rounds: int, per_round: int = 5, turn_seconds: float = TURN_SECONDS
) -> dict[str, float]:
    """Median seconds per call of each available contender, timed in alternating rounds. Each
    turn starts with one untimed call: on a 2-core host the contender that ran just before leaves
    its thread pool spinning or asleep, and without it the first timed calls pay for that (measured:
    bert_tiny on 2 threads read 12.8 ms for custom and 6.9 for ORT; with it, 4.6 and 4.6). A turn
    lasts at least `turn_seconds`, so a small network is timed warm, as a large one is: with 4
    calls a turn, resnet20's first calls after another contender's turn (caches full of its data)
    were most of its samples, and its median read 0.18-0.21 ms against 0.11 warm."""
    live = [c for c in contenders if c.available]
    samples: dict[str, list[float]] = {c.name: [] for c in live}
    for r in range(rounds):
        for c in live[r % len(live) :] + live[: r % len(live)]:
            c.run(1)  # untimed: wakes this contender's threads after the others' turns
            samples[c.name] += c.run(per_round, turn_seconds)
    return {name: statistics.median(s) for name, s in samples.items()}


def run_contenders(
    specs: dict[str, dict], counts: list[int], workdir: Path, rounds: int, per_round: int = 5
) -> dict[str, float]:
    """Every spec at every thread count, each in its own process; medians keyed "name@threads"."""
    contenders = [Contender(f"{name}@{t}", spec, t, workdir) for t in counts for name, spec in specs.items()]
    try:
        return interleaved_medians(contenders, rounds, per_round)
    finally:
        for c in contenders:
            c.close()


def add_ratios(
    row: dict, medians: dict[str, float], names: list[str], threads: int, counts: list[int]
) -> None:
    """Fill `row` for one thread count: each contender's `{name}_ms`, custom's speedup over the
    others (`custom_vs_{name}`), and custom's scaling from the first thread count."""
    for name in names:
        sec = medians.get(f"{name}@{threads}")
        row[f"{name}_ms"] = None if sec is None else sec * 1e3
    for other in names:
        if other != "custom" and row["custom_ms"] and row[f"{other}_ms"]:
            row[f"custom_vs_{other}"] = row[f"{other}_ms"] / row["custom_ms"]
    first = medians.get(f"custom@{counts[0]}")
    if threads != counts[0] and first and row["custom_ms"]:
        row[f"custom_scaling_vs_{counts[0]}t"] = first / (row["custom_ms"] / 1e3)


def agent_spec(
    runtime: str, fmt: str, data: bytes, x: np.ndarray, workdir: Path, tag: str, env: dict | None = None
) -> dict:
    """A contender running `data` through the agent's own runtime class (the timed call is invoke);
    `env`: extra environment for its process (a runtime's switches)."""
    model, inp = workdir / f"{tag}.{fmt}", workdir / f"{tag}.input.npy"
    model.write_bytes(data)
    np.save(inp, x)
    return {"kind": "agent", "runtime": runtime, "model": str(model), "input": str(inp), "env": env or {}}


def torch_spec(arch: str, x: np.ndarray, workdir: Path, tag: str, seed: int = 0) -> dict:
    """A contender running the FP32 architecture in torch (inference mode)."""
    inp = workdir / f"{tag}.input.npy"
    np.save(inp, x)
    return {"kind": "torch", "arch": arch, "seed": seed, "input": str(inp)}


def _ceiling(run, per_unit: float, seconds: float, threads: int) -> float:
    """Units per second of `run(reps)` (which returns units done) on `threads` threads at once,
    best of 5, each run sized to about seconds / 5."""
    from concurrent.futures import ThreadPoolExecutor

    reps, best = 1000, 0.0
    while True:
        t = time.perf_counter()
        run(reps)
        if time.perf_counter() - t > seconds / 5:
            break
        reps *= 4
    with ThreadPoolExecutor(threads) as pool:  # the kernels release the GIL
        for _ in range(5):
            t = time.perf_counter()
            done = sum(pool.map(lambda _: run(reps), range(threads)))
            best = max(best, done * per_unit / (time.perf_counter() - t))
    return best


def popcount_ceiling(isa: str = "auto", seconds: float = 0.3, threads: int = 1) -> float:
    """Binary MACs per second of the custom runtime's micro-kernel on L1-resident tiles, run on
    `threads` threads at once (best of 5). Its 2-thread / 1-thread ratio is what this machine
    gives a pure popcount loop: a layer's scaling is judged against it."""
    from biagent.kernels import _xnor

    if _xnor is None:
        return float("nan")
    return _ceiling(lambda reps: _xnor.bconv_ceiling(isa, reps), 64, seconds, threads)


def fma_ceiling(seconds: float = 0.3, threads: int = 1) -> float:
    """Float multiply-adds per second of independent vector FMA chains in registers (fpops.c:
    fp_fma_ceiling; AVX-512, AVX2+FMA or NEON, as this build and CPU have), on `threads`
    threads at once: what a full-precision conv (the stem) is judged against."""
    from biagent.kernels import _xnor

    if _xnor is None or not hasattr(_xnor, "fma_ceiling"):
        return float("nan")
    return _ceiling(_xnor.fma_ceiling, 1, seconds, threads)


def serve(spec_path: str) -> None:
    """The contender side: load, warm up, then answer each line "N" with N call durations."""
    spec = json.loads(Path(spec_path).read_text())
    x = np.load(spec["input"])
    if spec["kind"] == "torch":
        import torch

        import bimodels

        torch.set_num_threads(spec["threads"])
        torch.manual_seed(spec["seed"])
        model, tx = bimodels.create_model(spec["arch"]).eval(), torch.from_numpy(x)

        def call():
            with torch.inference_mode():
                model(tx)
    else:
        from biagent.runtimes import get_runtime

        cls = get_runtime(spec["runtime"])
        if not cls.describe().installed:
            print(json.dumps({"ready": False}), flush=True)
            return
        loaded = cls().load(Path(spec["model"]), spec["threads"])
        loaded.set_inputs([x])
        call = loaded.invoke
    call()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        calls, turn = line.split()
        seconds: list[float] = []
        while len(seconds) < int(calls) or sum(seconds) < float(turn):
            t = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - t)
        print(json.dumps({"seconds": seconds}), flush=True)


def workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="bibench-bench-")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
    else:
        raise SystemExit(__doc__)
