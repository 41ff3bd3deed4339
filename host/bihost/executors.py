"""Where independent jobs run: a local process pool (the default) or a Ray cluster.

Both hand back `(job, outcome)` pairs as jobs finish, in any order, so the caller files each
row the moment its job is done and an interrupted grid resumes. A job that takes its worker
down (a segfault, the OOM killer) comes back as a `JobCrashed` outcome instead of stopping
the rest. Each job sets its own torch thread count, so timings stay comparable.
"""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from .errors import UserError

EXECUTORS = ("local", "ray")


class ExecutorError(UserError):
    """The executor cannot start (a Ray address that does not answer, Ray not installed)."""


@dataclass
class JobCrashed:
    """The worker running the job died; `error` says how."""

    error: str


class LocalPool:
    """`workers` spawned processes, one job each at a time."""

    name = "local"

    def __init__(self, workers: int = 2):
        self.workers = max(1, workers)

    def describe(self) -> str:
        return f"local process pool, {self.workers} workers"

    def run(self, fn: Callable[[Any], Any], jobs: list) -> Iterator[tuple[Any, Any]]:
        queue = list(jobs)
        while queue:
            crashed = yield from self._pool(fn, queue, self.workers)
            # A dead worker breaks every job in flight in its pool; rerun those alone to know which it was.
            for job in crashed:
                for lost in (yield from self._pool(fn, [job], 1)):
                    yield lost, JobCrashed("its worker process died (twice, the second time alone)")

    @staticmethod
    def _pool(fn, queue: list, workers: int):
        """Run jobs from `queue` (consumed), at most `workers` in flight, so that a dead worker
        takes down only the jobs in flight; returns those, leaving the rest in `queue`."""
        ctx = multiprocessing.get_context("spawn")  # no forked torch state, the same on every OS
        with ProcessPoolExecutor(max_workers=min(workers, len(queue)), mp_context=ctx) as pool:
            in_flight: dict = {}
            while queue or in_flight:
                while queue and len(in_flight) < workers:
                    job = queue.pop(0)
                    try:
                        in_flight[pool.submit(fn, job)] = job
                    except BrokenProcessPool:  # a worker died since the last wait: the pool takes no more
                        queue.insert(0, job)  # never started: it goes to the next pool
                        return (yield from _settle(in_flight))
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    job = in_flight.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        return [job, *(yield from _settle(in_flight))]
                    yield job, result
        return []


def _settle(in_flight: dict):
    """Once the pool is broken: yield the jobs in flight that finished anyway, return the others."""
    wait(in_flight)  # each one ends now, with its result or the broken pool's error
    crashed = []
    for future, job in in_flight.items():
        try:
            result = future.result()
        except BrokenProcessPool:
            crashed.append(job)
            continue
        yield job, result
    return crashed


def _reachable(address: str, timeout: float = 5.0) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(
            f"--ray-address {address!r}: expected HOST:PORT of a Ray head (e.g. 10.0.0.5:6379)"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(
            f"the Ray head at {address} does not answer ({exc}); start it with `ray start --head "
            f"--port {port}` or check the address; no job was submitted"
        ) from None


class RayCluster:
    """Jobs as Ray tasks (one CPU per torch thread) on the cluster at `address`, or on a Ray
    started on this machine when no address is given."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int = 2):
        self.address, self.workers = address, workers
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ExecutorError("--executor ray needs Ray: pip install -e '.[ray]'") from None
        if address:
            _reachable(address)

    def describe(self) -> str:
        return f"Ray at {self.address}" if self.address else f"Ray on this machine ({self.workers} CPUs)"

    def run(self, fn: Callable[[Any], Any], jobs: list) -> Iterator[tuple[Any, Any]]:
        import os

        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPU-env warning on CPU jobs
        import ray

        started = not ray.is_initialized()
        if started:
            # Ray nices its workers to 15 by default: on a machine with other work their timings
            # stretch (x7 measured beside a nice-5 training run). A Ray started here runs them at
            # the driver's own niceness, as the local pool's workers inherit it.
            os.environ.setdefault("RAY_worker_niceness", str(os.nice(0)))
            if self.address:
                ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
            else:
                ray.init(
                    num_cpus=self.workers, logging_level="ERROR", log_to_driver=False, include_dashboard=False
                )
        try:
            remote = ray.remote(max_retries=0)(fn)  # our own retry policy files the failure first
            pending = {}
            for job in jobs:
                pending[remote.options(num_cpus=getattr(job, "threads", 1)).remote(job)] = job
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        yield job, ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        yield job, JobCrashed(f"{type(exc).__name__}: {str(exc)[:500]}")
        finally:
            if started:
                ray.shutdown()


def make_executor(name: str, workers: int, ray_address: str | None):
    if name == "local":
        if ray_address:
            raise ExecutorError("--ray-address goes with --executor ray")
        return LocalPool(workers)
    if name == "ray":
        return RayCluster(ray_address, workers)
    raise ExecutorError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
