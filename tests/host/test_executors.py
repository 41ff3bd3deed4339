"""The local process pool: every job comes back exactly once, even when workers die."""

from __future__ import annotations

import os
import time

from bihost.executors import JobCrashed, LocalPool


def job(n: int) -> int:
    """Jobs 3 and 7 take their worker down just as their neighbours finish (the pool breaks
    between a result and the next submit); the others finish."""
    time.sleep(0.2)
    if n in (3, 7):
        os._exit(1)
    return n * n


def test_dead_workers_lose_no_job_and_report_each_crash_once():
    jobs = list(range(12))
    seen: dict[int, object] = {}
    for j, outcome in LocalPool(workers=2).run(job, jobs):
        assert j not in seen, f"job {j} came back twice"
        seen[j] = outcome
    assert sorted(seen) == jobs
    crashed = sorted(j for j, o in seen.items() if isinstance(o, JobCrashed))
    assert crashed == [3, 7]
    assert all(seen[j] == j * j for j in jobs if j not in crashed)
