"""The worker's timing loop: which clock a latency sample comes from."""

from __future__ import annotations

import json

import numpy as np

from biagent import worker
from biagent.runtimes.base import LoadedModel, Runtime, RuntimeInfo, TensorSpec


class _SelfTimed(LoadedModel):
    """A test double of a runtime that runs its model in another process and times it there."""

    inputs = [TensorSpec("x", (1, 2), "float32")]
    outputs = [TensorSpec("y", (1, 2), "float32")]

    def set_inputs(self, arrays):
        self.x = arrays[0]

    def invoke(self):
        self.runtime_seconds = 0.25  # what the other process measured; the call itself is instant

    def get_outputs(self):
        return [self.x]


class _SelfTimedRuntime(Runtime):
    name = "self-timed"
    formats = ("bin",)

    @classmethod
    def describe(cls):
        return RuntimeInfo(cls.name, True, "1", "a test double", cls.formats)

    def load(self, path, threads):
        return _SelfTimed()


def test_a_runtime_that_times_itself_gives_the_samples(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(worker, "get_runtime", lambda name: _SelfTimedRuntime)
    (tmp_path / "m.bin").write_bytes(b"model")
    arrays = tmp_path / "cases.npz"
    np.savez(arrays, case0_in0=np.ones((1, 2), np.float32), case0_out0=np.ones((1, 2), np.float32))
    worker.run(
        {
            "runtime": "self-timed",
            "model_path": str(tmp_path / "m.bin"),
            "arrays": str(arrays),
            "warmup_runs": 1,
            "min_runs": 5,
            "min_duration_s": 0.0,
        }
    )
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (samples,) = [e["latency_s"] for e in events if e["event"] == "samples"]
    assert samples == [0.25] * 5
    (summary,) = [e for e in events if e["event"] == "summary"]
    assert summary["status"] == "ok" and summary["peak_rss_bytes"] > 0
