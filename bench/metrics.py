"""What a Prometheus scrape of `bihost metrics serve` costs as the results store grows.

    python bench/metrics.py [--rows 100000] [--series 100] [--samples 50] [--scrapes 15]

Two stores hold the same series (boards x archs x algorithms x runtimes x threads): one
with one row per series, one with `--rows` rows (the same series measured campaign after
campaign, each row with `--samples` raw latency samples, as `profile` files them). Each is
served over real HTTP on 127.0.0.1 and scraped `--scrapes` times; the medians are printed
side by side with their ratio, and with what reading the whole history (the exporter's old
way: every row, samples decoded, newest per series in Python) costs on the same stores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def fill(directory: Path, series: int, rows: int, samples: int) -> None:
    """A store with `rows` rows over `series` series, written in one transaction and then
    indexed the way an older store is on its first open (the exporter's write path, in bulk)."""
    from bihost.records import Measurement
    from bihost.results import _NAMES, ResultsStore, _flatten

    store = ResultsStore(directory)
    keys = list(
        itertools.islice(
            itertools.product(
                [f"board{i}" for i in range(4)],
                [f"arch{i}" for i in range(10)],
                [f"algo{i}" for i in range(9)],
                ["custom", "onnxruntime", "larq", "dabnn"],
                [1, 2],
            ),
            series,
        )
    )
    rng = random.Random(0)
    values = []
    for i in range(rows):
        board, arch, algo, runtime, threads = keys[i % series]
        ms = [rng.uniform(1, 3) for _ in range(samples)]
        m = Measurement(
            campaign=f"c{i // series:05d}",
            board=board,
            chip="test-soc",
            arch=arch,
            algorithm=algo,
            runtime=runtime,
            threads=threads,
            status="ok" if rng.random() > 0.1 else "error",
            runs=samples,
            model_bytes=50_000,
            fp32_model_bytes=400_000,
            speedup_vs_fp32=3.0,
            storage_ratio=8.0,
            max_abs_err=1e-6,
            created_at=1e9 + i,
            latency_ms={"min": min(ms), "median": statistics.median(ms), "mean": statistics.fmean(ms)},
            samples_ms=ms,
        )
        d = _flatten(m)
        values.append([d[c] for c in _NAMES])
    with sqlite3.connect(store.path) as db:
        db.executemany(
            f"INSERT INTO measurements ({', '.join(_NAMES)}) VALUES ({', '.join('?' * len(_NAMES))})", values
        )
        db.execute("UPDATE schema_version SET version = 2")  # reopening indexes it, as an upgrade does
    ResultsStore(directory)


def time_scrapes(directory: Path, scrapes: int) -> tuple[float, int]:
    """Median seconds of one HTTP scrape, and the exposition's size in bytes."""
    from bihost.metrics import serve_metrics
    from bihost.results import ResultsStore

    server, thread = serve_metrics(ResultsStore(directory), 0)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        times, size = [], 0
        for _ in range(scrapes + 1):
            start = time.perf_counter()
            with urllib.request.urlopen(url, timeout=120) as response:
                size = len(response.read())
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:]), size  # the first warms the page cache
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def time_full_history(directory: Path, repeats: int) -> float:
    """Median seconds of reading every row (samples included) and keeping the newest per series."""
    from bihost.results import ResultsStore, latest_rows

    store = ResultsStore(directory)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        latest_rows(store.rows())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--scrapes", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = {"series": args.series, "samples_per_row": args.samples}
    with tempfile.TemporaryDirectory() as tmp:
        for label, rows in (("small", args.series), ("large", args.rows)):
            directory = Path(tmp) / label
            start = time.perf_counter()
            fill(directory, args.series, rows, args.samples)
            out[f"{label}_rows"] = rows
            out[f"{label}_fill_s"] = time.perf_counter() - start
            out[f"{label}_store_mb"] = (directory / "results.sqlite").stat().st_size / 2**20
            seconds, size = time_scrapes(directory, args.scrapes)
            out[f"{label}_scrape_ms"], out[f"{label}_exposition_bytes"] = 1e3 * seconds, size
            out[f"{label}_full_history_ms"] = 1e3 * time_full_history(directory, 3 if rows > 10_000 else 15)
    out["scrape_ratio_large_vs_small"] = out["large_scrape_ms"] / out["small_scrape_ms"]
    out["full_history_ratio_large_vs_small"] = out["large_full_history_ms"] / out["small_full_history_ms"]
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{args.series} series, {args.samples} raw samples per row")
    for label in ("small", "large"):
        print(
            f"  {out[f'{label}_rows']:>7} rows ({out[f'{label}_store_mb']:.1f} MB): scrape "
            f"{out[f'{label}_scrape_ms']:.1f} ms ({out[f'{label}_exposition_bytes']} bytes); "
            f"reading the whole history {out[f'{label}_full_history_ms']:.1f} ms"
        )
    print(
        f"  large / small: scrape {out['scrape_ratio_large_vs_small']:.2f}x, "
        f"whole history {out['full_history_ratio_large_vs_small']:.0f}x"
    )


if __name__ == "__main__":
    main()
