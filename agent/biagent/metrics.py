"""The agent's own Prometheus metrics (`biagent serve --metrics-port`): how the board serves.

Results are the host's business (`bihost metrics serve` reads the results store); this
endpoint says what only the agent knows: benchmarks waiting and run (by outcome), the model
store's size, RPCs by method and status code, who holds the board's lease, and the build.
Counters live in a registry of the agent's own (no process or GC metrics of the host
Python); the store, queue and lease are read at scrape time, so they are never stale.

prometheus_client is imported only when metrics are asked for: an agent without it still
serves, and `--metrics-port` then says what to install.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from . import __version__
from .security import rewrap

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .server import AgentServicer

#: what a finished RunBenchmark call reports: its summary's status, or how it ended without one
OUTCOMES = ("ok", "numerics_error", "error", "cancelled")


class MetricsUnavailable(RuntimeError):
    """--metrics-port was given but prometheus_client is not installed on this board."""


class AgentMetrics:
    """Counters the servicer and the interceptor update, plus scrape-time views of its state."""

    def __init__(self, servicer: AgentServicer, name: str):
        try:
            from prometheus_client import CollectorRegistry, Counter
        except ImportError as exc:  # pragma: no cover - the base install has it
            raise MetricsUnavailable(
                "--metrics-port needs prometheus_client: pip install prometheus-client"
            ) from exc
        self.servicer, self.name = servicer, name
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "biagent_rpcs",
            "RPCs the agent finished, by method and gRPC status code.",
            ("method", "code"),
            registry=self.registry,
        )
        self.benchmarks = Counter(
            "biagent_benchmarks",
            "RunBenchmark calls that reached the board, by outcome (ok, numerics_error, error, cancelled).",
            ("outcome",),
            registry=self.registry,
        )
        for outcome in OUTCOMES:  # every outcome from the start: rate() over a new series is honest
            self.benchmarks.labels(outcome)
        self.registry.register(_StateCollector(self))

    def interceptor(self) -> grpc.ServerInterceptor:
        return _RpcCounter(self.rpcs)

    def serve(self, port: int, host: str = "127.0.0.1") -> tuple[WSGIServer, threading.Thread]:
        from prometheus_client import start_http_server

        return start_http_server(port, addr=host, registry=self.registry)


class _StateCollector:
    """Gauges read from the servicer at every scrape."""

    def __init__(self, metrics: AgentMetrics):
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return list(self._families(live=False))

    def collect(self) -> Iterator[Any]:
        yield from self._families(live=True)

    def _families(self, live: bool) -> Iterator[Any]:
        from prometheus_client.metrics_core import GaugeMetricFamily

        s = self.metrics.servicer
        info = GaugeMetricFamily(
            "biagent_build_info",
            "The agent's version and the board name it reports (value 1; label the scrape target with "
            "board= for the dashboards).",
            labels=("version", "name"),
        )
        queued = GaugeMetricFamily("biagent_queue_depth", "RunBenchmark calls waiting for the board.")
        running = GaugeMetricFamily("biagent_benchmark_running", "1 while a benchmark holds the board.")
        models = GaugeMetricFamily("biagent_store_models", "Models in the agent's store.")
        size = GaugeMetricFamily("biagent_store_bytes", "Bytes of the models in the agent's store.")
        lease = GaugeMetricFamily(
            "biagent_lease_held",
            "1 while a lease on the board is held, labelled by its holder.",
            labels=("holder",),
        )
        lease_left = GaugeMetricFamily(
            "biagent_lease_remaining_seconds", "Seconds before the held lease expires unless renewed."
        )
        if live:
            info.add_metric([__version__, self.metrics.name], 1.0)
            queued.add_metric([], s.slot.waiting)
            running.add_metric([], 1.0 if s.slot.busy else 0.0)
            stored = s.store.list()
            models.add_metric([], len(stored))
            size.add_metric([], sum(m.size_bytes for m in stored))
            state = s.leases.current()
            if state is not None:
                lease.add_metric([state.holder], 1.0)
                lease_left.add_metric([], max(0.0, state.expires_in_s))
            else:  # free: a 0 sample, so "no lease" is a value and not a gap
                lease.add_metric([""], 0.0)
                lease_left.add_metric([], 0.0)
        yield from (info, queued, running, models, size, lease, lease_left)


def _method_name(full: str) -> str:
    return full.rsplit("/", 1)[-1] or full


def _code_of(context: grpc.ServicerContext, error: BaseException | None) -> str:
    code = None
    try:
        code = context.code()  # set by abort() or set_code()
    except Exception:  # older grpcio: no accessor
        pass
    if code is None or code == grpc.StatusCode.OK:
        return "UNKNOWN" if error is not None else "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class _RpcCounter(grpc.ServerInterceptor):
    """Counts every finished RPC of the agent's service by method and status code."""

    def __init__(self, counter: Any):
        self.counter = counter

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = _method_name(handler_call_details.method)
        counter = self.counter

        def unary(request: Any, context: grpc.ServicerContext, behaviour: Callable) -> Any:
            error: BaseException | None = None
            try:
                return behaviour(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                counter.labels(method, _code_of(context, error)).inc()

        def stream(request: Any, context: grpc.ServicerContext, behaviour: Callable) -> Iterator[Any]:
            error: BaseException | None = None
            try:
                yield from behaviour(request, context)
            except GeneratorExit:  # the client went away mid-stream
                counter.labels(method, "CANCELLED").inc()
                raise
            except BaseException as exc:
                error = exc
                counter.labels(method, _code_of(context, error)).inc()
                raise
            else:
                counter.labels(method, _code_of(context, None)).inc()

        return rewrap(handler, unary, stream)
