"""The quick benchmark, run once per session: the bench, robustness, grid and report tests
all read the store it fills."""

from __future__ import annotations

import pytest

from tests.host.helpers import bihost


@pytest.fixture(scope="session")
def quick_bench(tmp_path_factory):
    results = tmp_path_factory.mktemp("bench") / "results"
    args = [
        "bench",
        "--track",
        "task,arch,robustness,consumption,complexity",
        "--algo",
        "bnn,reactnet",
        "--scale",
        "quick",
        "--results",
        str(results),
        "--json",
    ]
    first = bihost(*args)
    assert first.returncode == 0, first.stderr
    return args, results, first
