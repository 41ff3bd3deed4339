"""Prometheus exposition of the results store, for Grafana.

A custom collector (prometheus_client's pattern): metric families are built fresh from the
store at every scrape, so the exporter holds no state and always shows what is on disk.
The registry is a parameter, so tests read values from a fresh one without HTTP.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.samples import Sample

from .records import Measurement
from .results import ResultsStore, latest_rows

log = logging.getLogger(__name__)

UpProbe = Callable[[], dict[str, bool]]  # board name -> agent answers its health check
# pad: what the binarized convs pad with (daBNN's artifacts pad with -1, the others with 0)
RUN_LABELS = ("board", "chip", "arch", "algorithm", "runtime", "pad", "threads")
MODEL_LABELS = (
    "board",
    "chip",
    "arch",
    "algorithm",
    "runtime",
    "pad",
)  # properties of the artifact, not of threads
QUANTILES = (("0.5", "median"), ("0.9", "p90"), ("0.99", "p99"))


class LatencySummary(SummaryMetricFamily):
    """A summary with precomputed quantiles: SummaryMetricFamily itself only carries _sum and _count."""

    def add_run(
        self, labels: list[str], quantiles: Iterable[tuple[str, float]], count: int, total: float | None
    ) -> None:
        named = dict(zip(self._labelnames, labels))
        for q, value in quantiles:
            self.samples.append(Sample(self.name, {**named, "quantile": q}, value))
        if total is not None:  # without a mean there is no honest _sum
            self.add_metric(labels, count, total)


class ResultsCollector:
    """Exports the latest row per (board, arch, algorithm, runtime, threads) across all campaigns."""

    def __init__(self, store: ResultsStore, up_probe: UpProbe | None = None):
        self.store = store
        self.up_probe = up_probe

    def describe(self) -> list[Metric]:
        # Names only, so registering never touches the store (or a board).
        return list(self._families([], None if self.up_probe is None else {}))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(latest_rows(self.store.rows()), self._probe())

    def _probe(self) -> dict[str, bool] | None:
        if self.up_probe is None:
            return None
        try:
            return self.up_probe()
        except Exception:  # one broken probe must not cost the whole scrape
            log.exception("board up probe failed; bibench_agent_up omitted from this scrape")
            return None

    def _families(self, rows: list[Measurement], up: dict[str, bool] | None) -> Iterator[Metric]:
        latency = LatencySummary(
            "bibench_inference_latency_seconds",
            "Inference latency of one invoke on the board (precomputed quantiles).",
            labels=RUN_LABELS,
        )
        size = GaugeMetricFamily(
            "bibench_model_size_bytes", "Size of the deployed model artifact.", labels=MODEL_LABELS
        )
        speedup = GaugeMetricFamily(
            "bibench_speedup_ratio",
            "Measured fp32 latency over this model's latency, same board and runtime.",
            labels=RUN_LABELS,
        )
        storage = GaugeMetricFamily(
            "bibench_storage_ratio", "fp32 model bytes over this model's bytes.", labels=MODEL_LABELS
        )
        error = GaugeMetricFamily(
            "bibench_numerics_max_abs_error",
            "Largest absolute difference between the runtime's output and torch's.",
            labels=RUN_LABELS,
        )
        status = GaugeMetricFamily(
            "bibench_measurement_status",
            "1 for the latest measurement, by status.",
            labels=(*RUN_LABELS, "status"),
        )
        seen_models: set[tuple[str, ...]] = set()
        for m in sorted(rows, key=lambda r: r.created_at, reverse=True):  # newest first: it owns model labels
            run = [m.board, m.chip, m.arch, m.algorithm, m.runtime, f"{m.pad_value:g}", str(m.threads)]
            status.add_metric([*run, m.status], 1.0)
            if m.status != "ok":
                continue
            quantiles = [(q, m.latency_ms[k] / 1e3) for q, k in QUANTILES if k in m.latency_ms]
            mean = m.latency_ms.get("mean")
            latency.add_run(run, quantiles, m.runs, None if mean is None else mean * m.runs / 1e3)
            for family, value in ((speedup, m.speedup_vs_fp32), (error, m.max_abs_err)):
                if value is not None:
                    family.add_metric(run, value)
            model = tuple(run[:-1])
            if model in seen_models:
                continue
            seen_models.add(model)
            if m.model_bytes:
                size.add_metric(list(model), m.model_bytes)
            if m.storage_ratio is not None:
                storage.add_metric(list(model), m.storage_ratio)
        yield from (latency, size, speedup, storage, error, status)
        if up is not None:
            agent_up = GaugeMetricFamily(
                "bibench_agent_up", "1 if the board's agent answers its health check.", labels=("board",)
            )
            for board, is_up in sorted(up.items()):
                agent_up.add_metric([board], 1.0 if is_up else 0.0)
            yield agent_up


def serve_metrics(
    store: ResultsStore, port: int, host: str = "127.0.0.1", up_probe: UpProbe | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics from a daemon thread; stop with `server.shutdown(); server.server_close()`.

    Uses a fresh registry holding only this collector (no process/GC metrics of the host).
    Port 0 binds a free port: read it back from `server.server_port`.
    """
    registry = CollectorRegistry()
    registry.register(ResultsCollector(store, up_probe))
    return start_http_server(port, addr=host, registry=registry)
