"""Model push over loopback: throughput of a 50 MB upload and the cost of a re-push.

    python bench/push.py [--mb 50] [--repeats 5] [--json]

Starts a real agent on 127.0.0.1 (port 0), pushes random bytes (a fresh model each time,
so nothing is deduplicated), then re-pushes a stored model (one StatModel round trip).
Goal: >= 200 MB/s for the upload; the re-push is reported next to a bare health check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bihost.client import AgentClient  # noqa: E402
from bihost.local_agent import LocalAgent  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = int(args.mb * 1e6)
    with tempfile.TemporaryDirectory() as store, LocalAgent(Path(store), name="bench") as agent:
        client = AgentClient(agent.address, "bench", timeout_s=60)
        client.wait_ready(30)
        uploads, repushes, health = [], [], []
        for _ in range(args.repeats):
            data = os.urandom(size)
            t = time.perf_counter()
            first = client.push(data, "onnx", "bench")
            uploads.append(time.perf_counter() - t)
            assert not first.already_present
            t = time.perf_counter()
            again = client.push(data, "onnx", "bench")
            repushes.append(time.perf_counter() - t)
            assert again.already_present
            t = time.perf_counter()
            client.health()
            health.append(time.perf_counter() - t)
            client.delete_model(first.model_id)
        client.close()
    upload_s = statistics.median(uploads)
    result = {
        "artifact_mb": size / 1e6,
        "upload_median_s": upload_s,
        "upload_mb_per_s": size / 1e6 / upload_s,
        "goal_mb_per_s": 200,
        "meets_goal": size / 1e6 / upload_s >= 200,
        "repush_median_ms": statistics.median(repushes) * 1e3,
        "health_check_median_ms": statistics.median(health) * 1e3,
        "repush_vs_health_ratio": statistics.median(repushes) / statistics.median(health),
        "repeats": args.repeats,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:26s} {v:.3f}" if isinstance(v, float) else f"{k:26s} {v}")


if __name__ == "__main__":
    main()
