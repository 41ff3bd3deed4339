"""One benchmark in its own process: `python -m biagent.worker JOB.json`.

Isolation is the point: a runtime that segfaults or leaks takes down this process, not the
agent; the thread count is fixed through the environment before any library starts its
pools; peak RSS is this process's own. Events go to stdout as JSON lines:
  {"event": "progress", "phase", "done", "total", "message"}
  {"event": "samples", "latency_s": [...]}
  {"event": "summary", ...}            last line on success
  {"event": "error", "code", "message"} last line on a failure the worker understood
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from . import hwinfo, numerics
from .measure import check_tolerance, summarize
from .runtimes import InvokeError, ModelLoadError, RuntimeNotInstalled, UnknownRuntime, get_runtime

SECRET_ENV = ("BIAGENT_TOKEN",)
PROGRESS_EVERY_S = 0.5  # at most two progress events a second per phase
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


# Newest first: (OpenBLAS kernel set, the x86 flags it needs).
OPENBLAS_CORES = (
    ("Cooperlake", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"}),
    ("SkylakeX", {"avx512f", "avx512bw", "avx512vl", "avx512dq"}),
    ("Haswell", {"avx2", "fma"}),
)


def openblas_coretype(flags: set[str]) -> str | None:
    """The OpenBLAS kernel set to name for a CPU with these flags (None: let OpenBLAS decide).

    OpenBLAS (0.3.23 in numpy 1.26's wheels) takes an x86 CPU newer than it knows for a 2004
    Prescott and runs SSE3 kernels: measured on this host's Xeon (AVX-512), the conv1 sgemm
    of resnet18 ran 8.2 ms instead of 2.4 ms. Naming the newest set the flags allow is safe
    on CPUs it does know (the same kernels) and fixes the ones it does not.
    """
    for name, needs in OPENBLAS_CORES:
        if needs <= flags:
            return name
    return None


# Runtimes that parallelise by themselves (OpenMP kernels, their own pools) and need BLAS
# single-threaded: a second spinning pool on the same cores only steals them.
OWN_THREADS = {"custom"}


def thread_env(threads: int, runtime: str | None = None) -> dict[str, str]:
    """Environment for a worker that must use exactly `threads` threads (and OpenBLAS's right kernels)."""
    env = {
        k: v for k, v in os.environ.items() if k not in SECRET_ENV
    }  # a runtime never sees the agent's token
    env.update({k: str(threads) for k in THREAD_ENV})
    if runtime in OWN_THREADS:
        env.update({k: "1" for k in THREAD_ENV if k != "OMP_NUM_THREADS"})
    if "OPENBLAS_CORETYPE" not in env:  # an operator's choice wins
        core = openblas_coretype(set(hwinfo.cpu_flags()))
        if core:
            env["OPENBLAS_CORETYPE"] = core
    return env


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class Failure(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def load_cases(path: str | None) -> tuple[list[numerics.Case], list[np.ndarray]]:
    """Numerics cases and the timing input from the job's npz (see server.write_job)."""
    if not path:
        return [], []
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    cases = []
    i = 0
    while f"case{i}_in0" in arrays:
        ins = [arrays[f"case{i}_in{j}"] for j in range(_count(arrays, f"case{i}_in"))]
        outs = [arrays[f"case{i}_out{j}"] for j in range(_count(arrays, f"case{i}_out"))]
        signs: list[numerics.SignReference] = []
        while f"case{i}_sign{len(signs)}_bits" in arrays:
            signs.append(numerics.SignReference.from_arrays(arrays, f"case{i}_sign{len(signs)}"))
        alternatives: list[numerics.Alternative] = []
        while f"case{i}_alt{len(alternatives)}_meta" in arrays:
            k = len(alternatives)
            layer, position, margin = arrays[f"case{i}_alt{k}_meta"].tolist()
            alt_outs = [
                arrays[f"case{i}_alt{k}_out{j}"] for j in range(_count(arrays, f"case{i}_alt{k}_out"))
            ]
            alternatives.append(numerics.Alternative(int(layer), int(position), float(margin), alt_outs))
        cases.append(numerics.Case(ins, outs, signs, alternatives))
        i += 1
    timing = [arrays[f"timing{j}"] for j in range(_count(arrays, "timing"))]
    return cases, timing


def _count(arrays: dict, prefix: str) -> int:
    n = 0
    while f"{prefix}{n}" in arrays:
        n += 1
    return n


def run(job: dict) -> None:
    threads = max(1, int(job.get("threads") or 1))
    emit("progress", phase="loading", done=0, total=1, message=f"{job['runtime']} loading model")
    try:
        runtime_cls = get_runtime(job["runtime"])
    except UnknownRuntime as exc:
        raise Failure("INVALID_ARGUMENT", str(exc)) from None
    info = runtime_cls.describe()
    if not info.installed:
        raise Failure(
            "FAILED_PRECONDITION", f"runtime {info.name} is not installed on this board: {info.detail}"
        )
    fmt = job.get("format", "")
    if fmt and fmt not in runtime_cls.formats:
        raise Failure(
            "INVALID_ARGUMENT",
            f"runtime {info.name} loads {', '.join(runtime_cls.formats)} artifacts, not {fmt!r}",
        )
    t0 = time.perf_counter()
    try:
        model = runtime_cls().load(Path(job["model_path"]), threads)
    except ModelLoadError as exc:
        raise Failure("INVALID_ARGUMENT", f"{info.name} cannot load this model: {exc}") from None
    except RuntimeNotInstalled as exc:
        raise Failure("FAILED_PRECONDITION", str(exc)) from None
    load_s = time.perf_counter() - t0

    cases, timing_inputs = load_cases(job.get("arrays"))
    atol, rtol = float(job.get("atol", 1e-4)), float(job.get("rtol", 1e-5))
    try:
        check_tolerance(atol, rtol)
    except ValueError as exc:
        raise Failure("INVALID_ARGUMENT", str(exc)) from None
    runtime = runtime_cls()
    try:
        result = numerics.check(
            model,
            cases,
            atol,
            rtol,
            probing=lambda: runtime.load_probing(Path(job["model_path"]), threads),
            progress=lambda i, n: emit(
                "progress", phase="checking", done=i, total=n, message="comparing with the reference"
            ),
        )
    except InvokeError as exc:
        raise Failure("INVALID_ARGUMENT", f"{info.name} failed on the check input: {exc}") from None
    numerics_ok, errors = result.ok, result.errors
    reasons = [result.reason] if result.reason else []

    inputs = timing_inputs or (
        cases[0].inputs if cases else [np.zeros(s.shape, s.dtype) for s in model.inputs]
    )
    try:
        model.set_inputs(inputs)
        model.invoke()  # once, untimed: an input the model cannot take is the request's fault, not a crash
    except InvokeError as exc:
        raise Failure("INVALID_ARGUMENT", f"{info.name} rejected the timing input: {exc}") from None
    warmup = max(0, int(job.get("warmup_runs", 1)))
    last_report = 0.0
    for i in range(warmup):
        now = time.perf_counter()
        if now - last_report > PROGRESS_EVERY_S:  # a huge warmup must not flood the stream
            emit("progress", phase="warmup", done=i, total=warmup, message="")
            last_report = now
        model.invoke()
    min_runs = max(1, int(job.get("min_runs", 10)))
    min_duration = float(job.get("min_duration_s", 0.0))
    max_duration = float(job.get("max_duration_s", 0.0))
    samples: list[float] = []
    start = last_report = time.perf_counter()
    clock = time.perf_counter
    while True:
        t = clock()
        model.invoke()
        wall = clock() - t
        samples.append(wall if model.runtime_seconds is None else model.runtime_seconds)
        now = clock()
        elapsed = now - start
        if len(samples) >= min_runs and elapsed >= min_duration:
            break
        if max_duration and elapsed >= max_duration:
            break
        if now - last_report > PROGRESS_EVERY_S:
            emit("progress", phase="timing", done=len(samples), total=min_runs, message=f"{elapsed:.1f} s")
            last_report = now
    model.close()
    emit("samples", latency_s=samples)
    temp = hwinfo.temperature_c()
    # A runtime's own process (the daBNN driver process) has ended by now: count it too.
    rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    emit(
        "summary",
        status="ok" if numerics_ok else "numerics_error",
        reason="; ".join(reasons),
        latency=summarize(samples).as_dict(),
        runs=len(samples),
        warmup_runs=warmup,
        threads=threads,
        model_bytes=os.path.getsize(job["model_path"]),
        peak_rss_bytes=int(rss if sys.platform == "darwin" else rss * 1024),
        max_abs_errors=errors,
        runtime=info.name,
        runtime_version=info.version,
        load_s=load_s,
        governor=hwinfo.governor(),
        temperature_c=temp,
        affinity=hwinfo.affinity(),
    )


def die_with_parent(agent_pid: int | None) -> None:
    """Linux: be killed when the agent dies (even by SIGKILL). An orphaned worker would go on
    timing its model beside the restarted agent's next benchmark and skew it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if agent_pid and os.getppid() != agent_pid:  # the agent died before the call above took effect
        os._exit(3)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    die_with_parent(job.get("agent_pid"))
    try:
        run(job)
    except Failure as exc:
        emit("error", code=exc.code, message=str(exc))
        return 2
    except InvokeError as exc:
        emit("error", code="INTERNAL", message=f"runtime failed while running: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
