"""Prometheus exposition of the results store, for Grafana.

A custom collector (prometheus_client's pattern): metric families are built fresh from the
store at every scrape, so the exporter holds no state and always shows what is on disk.
The registry is a parameter, so tests read values from a fresh one without HTTP.

What the names promise (Prometheus's conventions):

* A stored measurement is a snapshot, not a running count, so its numbers are gauges:
  ``bibench_latency_seconds{stat=...}`` and the ratios, sizes and errors of the newest *ok*
  measurement of each series, with ``bibench_measured_timestamp_seconds`` saying when it
  was taken. A later failed retry does not hide them: its status is exported apart
  (``bibench_measurement_status``, ``bibench_last_measurement_timestamp_seconds``).
* Counters only count up: ``bibench_measurements_total{board, status}`` is every
  measurement ever filed, so repeating a campaign never resets a series.
* A scrape reads one row per series (the store keeps that index on write), never the
  history or the raw samples: its cost follows the number of series, not of rows.
* The exporter reports on itself: build info, how long the scrape's store read took, and
  whether it succeeded (a failed read still answers, with success 0).
"""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from biagent.security import is_loopback

from . import __version__
from .errors import UserError
from .records import BoardState, TrainingRun
from .results import CampaignProgress, ResultsStore, Series

log = logging.getLogger(__name__)

# board name -> its agent answers its health check (None: in the inventory, not probed from here)
UpProbe = Callable[[], dict[str, bool | None]]
# pad: what the binarized convs pad with (daBNN's artifacts pad with -1, the others with 0)
RUN_LABELS = ("board", "chip", "arch", "algorithm", "runtime", "pad", "threads")
MODEL_LABELS = RUN_LABELS[:-1]  # properties of the artifact, not of threads
LATENCY_STATS = ("min", "median", "mean", "p90", "p99", "max")  # stat label values, as stored
METRICS_PATH = "/metrics"


def _run_labels(m) -> list[str]:
    return [m.board, m.chip, m.arch, m.algorithm, m.runtime, f"{m.pad_value:g}", str(m.threads)]


class ResultsCollector:
    """Exports the newest row (and the newest ok row) per (board, arch, algorithm, runtime,
    threads) across all campaigns."""

    def __init__(self, store: ResultsStore, up_probe: UpProbe | None = None):
        self.store = store
        self.up_probe = up_probe
        self._last_probe: dict[str, bool | None] | None = None

    def describe(self) -> list[Metric]:
        # Names only, so registering never touches the store (or a board).
        return [
            *self._families([], {}, None if self.up_probe is None else {}),
            *self._farm_families({}, None),
            *self._campaign_families([]),
            *self._training_families([]),
            *self._self_families(0.0, True),
        ]

    def collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        try:
            series, counts = self.store.latest_series(), self.store.measurement_counts()
            health, campaigns, ok = self.store.board_states(), self.store.campaign_progress(), True
            trained = self.store.training_runs()
        except Exception:  # a locked or damaged store: say so in the scrape, don't fail it
            log.exception("reading the results store failed; exporting bibench_exporter_scrape_success 0")
            series, counts, health, campaigns, trained, ok = [], {}, {}, [], [], False
        elapsed = time.perf_counter() - start
        yield from self._families(series, counts, self._probe())
        yield from self._farm_families(health, self._last_probe, ok)
        yield from self._campaign_families(campaigns)
        yield from self._training_families(trained)
        yield from self._self_families(elapsed, ok)

    def _probe(self) -> dict[str, bool | None] | None:
        self._last_probe = None
        if self.up_probe is None:
            return None
        try:
            self._last_probe = self.up_probe()
        except Exception:  # one broken probe must not cost the whole scrape
            log.exception("board up probe failed; bibench_agent_up omitted from this scrape")
        return self._last_probe

    @staticmethod
    def _farm_families(
        health: dict[str, BoardState], boards: dict[str, bool | None] | None, ok: bool = True
    ) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "bibench_board_health",
            "1 for the board's health state (good: scheduled; bad: stopped answering, set after "
            "a failed health check; maintenance: set by an operator). Inventory boards never "
            "marked are good.",
            labels=("board", "state"),
        )
        if ok:  # without the store there is no honest state to show
            for board in sorted(set(health) | set(boards or {})):
                family.add_metric([board, health.get(board, BoardState()).state], 1.0)
        yield family

    @staticmethod
    def _campaign_families(campaigns: Iterable[CampaignProgress]) -> Iterator[Metric]:
        labels = ("campaign", "board", "kind")
        planned = GaugeMetricFamily(
            "bibench_campaign_planned",
            "Items a campaign planned on this board (profile: measurements; bench: training runs).",
            labels=labels,
        )
        done = GaugeMetricFamily(
            "bibench_campaign_done",
            "Planned items stored so far (including those already stored at start).",
            labels=labels,
        )
        failed = GaugeMetricFamily(
            "bibench_campaign_failed",
            "Planned items that failed in this run of the campaign (a re-run retries them).",
            labels=labels,
        )
        running = GaugeMetricFamily(
            "bibench_campaign_running",
            "1 while the campaign has not finished on this board (also when its process died: see the last progress).",
            labels=labels,
        )
        progress = GaugeMetricFamily(
            "bibench_campaign_last_progress_timestamp_seconds",
            "When the campaign last finished an item on this board, or started (Unix time).",
            labels=labels,
        )
        for c in campaigns:
            key = [c.campaign, c.board, c.kind]
            planned.add_metric(key, c.planned)
            done.add_metric(key, c.done)
            failed.add_metric(key, c.failed)
            running.add_metric(key, 1.0 if c.running else 0.0)
            progress.add_metric(key, c.last_progress_at)
        yield from (planned, done, failed, running, progress)

    @staticmethod
    def _training_families(runs: Iterable[TrainingRun]) -> Iterator[Metric]:
        """The accuracy tracks' runs: the newest per (task, arch, algorithm, scale, seed)."""
        labels = ("task", "arch", "algorithm", "scale", "seed", "metric_name")
        metric = GaugeMetricFamily(
            "bibench_training_metric",
            "Test-split metric of the newest training run of this (task, arch, algorithm, scale, "
            "seed), in [0, 1] (accuracy, mAP@0.5, mIoU or Matthews correlation: label metric_name).",
            labels=labels,
        )
        seconds = GaugeMetricFamily(
            "bibench_training_seconds", "Training time of that run (resumes summed).", labels=labels
        )
        newest: dict[tuple, TrainingRun] = {}
        for r in runs:
            key = (r.task, r.arch, r.algorithm, r.scale, r.seed)
            if key not in newest or r.created_at >= newest[key].created_at:
                newest[key] = r
        for r in newest.values():
            values = [r.task, r.arch, r.algorithm, r.scale, str(r.seed), r.metric_name]
            metric.add_metric(values, r.metric)
            seconds.add_metric(values, r.train_seconds)
        yield from (metric, seconds)

    @staticmethod
    def _self_families(elapsed: float, ok: bool) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "bibench_exporter_build_info", "The exporter's bihost version (value 1).", labels=("version",)
        )
        info.add_metric([__version__], 1.0)
        yield info
        yield GaugeMetricFamily(
            "bibench_exporter_scrape_duration_seconds",
            "Time this scrape spent reading the results store.",
            value=elapsed,
        )
        yield GaugeMetricFamily(
            "bibench_exporter_scrape_success",
            "1 if this scrape read the results store, 0 if the read failed (see the exporter's log).",
            value=1.0 if ok else 0.0,
        )

    def _families(
        self, series: Iterable[Series], counts: dict[tuple[str, str], int], up: dict[str, bool | None] | None
    ) -> Iterator[Metric]:
        latency = GaugeMetricFamily(
            "bibench_latency_seconds",
            "Latency of one invoke in the newest ok measurement of this series, by statistic over "
            "its timed invokes (a snapshot of one measurement, not a running summary).",
            labels=(*RUN_LABELS, "stat"),
        )
        previous = GaugeMetricFamily(
            "bibench_previous_latency_seconds",
            "Latency of one invoke in the ok measurement before the newest one of this series, by "
            "statistic: what a latency regression is judged against.",
            labels=(*RUN_LABELS, "stat"),
        )
        invokes = GaugeMetricFamily(
            "bibench_latency_invokes",
            "Timed invokes behind the newest ok measurement's latency statistics.",
            labels=RUN_LABELS,
        )
        measured = GaugeMetricFamily(
            "bibench_measured_timestamp_seconds",
            "When the newest ok measurement of this series was taken (Unix time).",
            labels=RUN_LABELS,
        )
        size = GaugeMetricFamily(
            "bibench_model_size_bytes", "Size of the deployed model artifact.", labels=MODEL_LABELS
        )
        speedup = GaugeMetricFamily(
            "bibench_speedup_ratio",
            "Median latency of the FP32 model of the same architecture, measured in the same "
            "campaign on the same board with the same threads on the runtime in label "
            "fp32_runtime, over this model's median latency.",
            labels=(*RUN_LABELS, "fp32_runtime"),
        )
        storage = GaugeMetricFamily(
            "bibench_storage_ratio",
            "FP32 model bytes over this model's bytes (each in its runtime's format).",
            labels=MODEL_LABELS,
        )
        error = GaugeMetricFamily(
            "bibench_numerics_max_abs_error",
            "Largest absolute difference between the runtime's output and torch's, over the check inputs.",
            labels=RUN_LABELS,
        )
        status = GaugeMetricFamily(
            "bibench_measurement_status",
            "1 for the status of the newest measurement of this series (ok or not).",
            labels=(*RUN_LABELS, "status"),
        )
        last = GaugeMetricFamily(
            "bibench_last_measurement_timestamp_seconds",
            "When the newest measurement of this series, whatever its status, was filed (Unix time).",
            labels=RUN_LABELS,
        )
        filed = CounterMetricFamily(
            "bibench_measurements",
            "Measurements filed to the results store, by board and status (retries included).",
            labels=("board", "status"),
        )
        # An emulated board's rows are rehearsal: its latencies say nothing about a chip, so they
        # are on no dashboard next to real boards (docs/emulated-board.md).
        series = list(series)
        emulated = {s.last.board for s in series if s.last.emulated}
        series = [s for s in series if s.last.board not in emulated]
        for (board, st), n in sorted(counts.items()):
            if board not in emulated:
                filed.add_metric([board, st], float(n))
        seen_models: set[tuple[str, ...]] = set()
        # newest first: the newest ok measurement of a model owns its model labels
        for s in sorted(series, key=lambda s: s.last.created_at, reverse=True):
            run = _run_labels(s.last)
            status.add_metric([*run, s.last.status], 1.0)
            last.add_metric(run, s.last.created_at)
        for s in series:
            if s.previous_ok is not None:
                for stat in LATENCY_STATS:
                    if stat in s.previous_ok.latency_ms:
                        previous.add_metric(
                            [*_run_labels(s.previous_ok), stat], s.previous_ok.latency_ms[stat] / 1e3
                        )
        good = [s.last_ok for s in series if s.last_ok is not None]
        for m in sorted(good, key=lambda m: m.created_at, reverse=True):
            run = _run_labels(m)
            for stat in LATENCY_STATS:
                if stat in m.latency_ms:
                    latency.add_metric([*run, stat], m.latency_ms[stat] / 1e3)
            invokes.add_metric(run, float(m.runs))
            measured.add_metric(run, m.created_at)
            if m.speedup_vs_fp32 is not None:
                speedup.add_metric([*run, m.fp32_runtime or "unknown"], m.speedup_vs_fp32)
            if m.max_abs_err is not None:
                error.add_metric(run, m.max_abs_err)
            model = tuple(run[:-1])
            if model in seen_models:
                continue
            seen_models.add(model)
            if m.model_bytes:
                size.add_metric(list(model), m.model_bytes)
            if m.storage_ratio is not None:
                storage.add_metric(list(model), m.storage_ratio)
        yield from (latency, previous, invokes, measured, size, speedup, storage, error, status, last, filed)
        if up is not None:
            agent_up = GaugeMetricFamily(
                "bibench_agent_up", "1 if the board's agent answers its health check.", labels=("board",)
            )
            for board, is_up in sorted(up.items()):
                if is_up is not None:
                    agent_up.add_metric([board], 1.0 if is_up else 0.0)
            yield agent_up


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # a scrape every 30 s is not news
        pass


class MetricsSecurityError(UserError):
    """The exporter would serve results in a way the lab did not ask for (plaintext off loopback)."""


@dataclass(frozen=True)
class ServeSecurity:
    """TLS (certificate and key, PEM) and a bearer token for /metrics; each optional.

    As for the agent, plaintext is for loopback: another address needs TLS or `insecure`."""

    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    insecure: bool = False

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    def check(self, host: str) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise MetricsSecurityError("TLS needs both --tls-cert and --tls-key")
        if not self.tls and not is_loopback(host) and not self.insecure:
            raise MetricsSecurityError(
                f"refusing to serve metrics in plaintext on {host}: results and board names would "
                "cross the network readable by anyone; give --tls-cert and --tls-key (and a "
                "--token-file), or bind 127.0.0.1, or pass --insecure-serve on a network you trust"
            )

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise MetricsSecurityError(
                f"cannot load the TLS certificate {self.cert_file} with key {self.key_file}: {exc}"
            ) from exc
        return context


def metrics_app(registry: CollectorRegistry, token: str | None = None) -> Callable:
    """A WSGI app: the exposition at /metrics, a pointer to it at /, 404 for any other path
    (a mistyped metrics_path must fail the scrape, not look like an empty target). With a
    `token`, /metrics answers 401 unless the request carries `Authorization: Bearer <token>`."""
    exposition = make_wsgi_app(registry)
    expected = f"Bearer {token}".encode() if token else None

    def app(environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path == METRICS_PATH:
            sent = environ.get("HTTP_AUTHORIZATION", "").encode()
            if expected is not None and not hmac.compare_digest(sent, expected):
                start_response(
                    "401 Unauthorized",
                    [("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", "Bearer")],
                )
                why = "was not accepted" if sent else "is required (Authorization: Bearer <token>)"
                return [f"a bearer token {why}\n".encode()]
            return exposition(environ, start_response)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"bihost metrics exporter: the exposition is at /metrics\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"no such path {path!r}; the exposition is at {METRICS_PATH}\n".encode()]

    return app


def serve_metrics(
    store: ResultsStore,
    port: int,
    host: str = "127.0.0.1",
    up_probe: UpProbe | None = None,
    security: ServeSecurity | None = None,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics from a daemon thread; stop with `server.shutdown(); server.server_close()`.

    Uses a fresh registry holding only this collector (no process/GC metrics of the host).
    Port 0 binds a free port: read it back from `server.server_port`. Plaintext off loopback
    is refused (MetricsSecurityError) unless `security` says insecure.
    """
    security = security or ServeSecurity()
    security.check(host)
    context = security.context() if security.tls else None
    registry = CollectorRegistry()
    registry.register(ResultsCollector(store, up_probe))

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    app = metrics_app(registry, security.token)
    server = make_server(host, port, app, Server, handler_class=_QuietHandler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="bihost-metrics", daemon=True)
    thread.start()
    return server, thread
