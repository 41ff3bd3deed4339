"""The agent's gRPC server: model store, board identity and benchmarks in worker processes."""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from biproto import agent_pb2 as pb
from biproto import agent_pb2_grpc as pb_grpc

from . import hwinfo, numerics, wire
from .lease import LeaseError, LeaseManager
from .limits import CallLimiter, LimitInterceptor
from .measure import check_tolerance
from .runtimes import UnknownRuntime, describe_all, get_runtime
from .security import SecurityConfigError, ServerTls, TokenInterceptor, is_loopback
from .store import ModelStore, StoreError, StoreLock, UploadCorrupt
from .worker import thread_env

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .metrics import AgentMetrics

log = logging.getLogger("biagent")
SERVICE_NAME = "bibench.farm.v1.Agent"
HEARTBEAT_S = 2.0  # a running benchmark sends at least one event this often (the host's stall watchdog)
MAX_MESSAGE_BYTES = 64 << 20
SPARE_THREADS = 4  # threads beyond --max-streams: the health check and refusals always find one
# Bounds of a benchmark request (documented in agent.proto): a board is never held forever.
MAX_WARMUP_RUNS = 10_000
MAX_MIN_RUNS = 1_000_000
MAX_TIMED_S = 3600.0  # also the timed phase's limit when a request sets none (max_duration_s = 0)


class UploadIdle(Exception):
    """The client of an upload sent nothing for the idle limit."""


class IdleReader:
    """Reads a request stream on a helper thread so the handler can give up on a silent client.

    A sync gRPC handler blocks in `next(request_iterator)` for as long as the client keeps the
    stream open without sending; with no deadline set by the client that is forever, holding
    a slot and a temp file. `next(idle_s)` raises UploadIdle instead.
    """

    _END = object()

    def __init__(self, iterator) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=2)  # bounded: the network never outruns the disk
        self._closed = threading.Event()
        threading.Thread(target=self._pump, args=(iterator,), daemon=True, name="upload-reader").start()

    def _pump(self, iterator) -> None:
        try:
            for item in iterator:
                if not self._put(item):
                    return
            self._put(self._END)
        except Exception as exc:  # the call was cancelled or broke: hand it to the handler
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.25)
                return True
            except queue.Full:
                continue
        return False

    def next(self, idle_s: float):
        """The next message, or None at the end of the stream."""
        try:
            item = self._queue.get(timeout=idle_s)
        except queue.Empty:
            raise UploadIdle(f"the client sent nothing for {idle_s:g} s") from None
        if item is self._END:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self._closed.set()


def check_benchmark_request(request, cores: int) -> None:
    """Raise ValueError naming the first field out of its documented bounds."""
    if not 0 <= request.threads <= cores:
        raise ValueError(
            f"threads must be 0 (one) to {cores} (this board's logical cores), got {request.threads}"
        )
    if not 0 <= request.warmup_runs <= MAX_WARMUP_RUNS:
        raise ValueError(f"warmup_runs must be 0 to {MAX_WARMUP_RUNS}, got {request.warmup_runs}")
    if not 0 <= request.min_runs <= MAX_MIN_RUNS:
        raise ValueError(f"min_runs must be 0 (ten) to {MAX_MIN_RUNS}, got {request.min_runs}")
    for name in ("min_duration_s", "max_duration_s"):
        value = getattr(request, name)
        if not 0.0 <= value <= MAX_TIMED_S:  # NaN fails this too
            raise ValueError(f"{name} must be 0 to {MAX_TIMED_S:.0f} seconds, got {value}")
    check_tolerance(request.atol, request.rtol)


class BenchmarkSlot:
    """One benchmark at a time per board: others wait in line, never interleave."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None  # the handler thread that holds it
        self._count_lock = threading.Lock()
        self.waiting = 0  # calls in line (the agent's metrics read it)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def acquire(self, context: grpc.ServicerContext, max_wait_s: float) -> Iterator[pb.BenchmarkEvent]:
        """Yields "queued" events until the board is ours; returns without it if the caller left
        (so check `held_by_me()` before running, and release only what was acquired)."""
        start = time.monotonic()
        with self._count_lock:
            self.waiting += 1
        try:
            while not self._lock.acquire(timeout=0.25):
                if not context.is_active():
                    return
                waited = time.monotonic() - start
                if waited > max_wait_s:
                    context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"board busy: another benchmark has run for more than {max_wait_s:.0f} s; retry later",
                    )
                yield pb.BenchmarkEvent(
                    progress=pb.Progress(phase="queued", message=f"waiting {waited:.0f} s for the board")
                )
            self._owner = threading.get_ident()
        finally:
            with self._count_lock:
                self.waiting -= 1

    def held_by_me(self) -> bool:
        return self._lock.locked() and self._owner == threading.get_ident()

    def release(self) -> None:
        self._owner = None
        self._lock.release()


class AgentServicer(pb_grpc.AgentServicer):
    def __init__(
        self,
        store: ModelStore,
        name: str,
        max_queue_wait_s: float = 600.0,
        work_dir: Path | None = None,
        upload_idle_s: float = 30.0,
    ):
        self.store, self.name = store, name
        self.max_queue_wait_s = max_queue_wait_s
        self.upload_idle_s = upload_idle_s
        self.cores = hwinfo.logical_cores()
        self.slot = BenchmarkSlot()
        self.leases = LeaseManager()
        self.on_benchmark: Callable[[str], None] = lambda outcome: None  # the agent's metrics count it
        self.work_dir = Path(work_dir or store.root / "jobs")
        # Job folders of a worker that died with its agent (SIGKILL, power cut): nobody reads them.
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)

    # -- identity ---------------------------------------------------------------------
    def GetBoardInfo(self, request, context):
        return wire.board_info(self.name, hwinfo.measure(), describe_all())

    # -- models -----------------------------------------------------------------------
    def PushModel(self, request_iterator, context):
        upload = None
        reader = IdleReader(request_iterator)
        try:
            first = reader.next(self.upload_idle_s)
            if first is None or first.WhichOneof("kind") != "header":
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "the first chunk of a push must be the model header"
                )
            header = wire.header_to_model(first.header)
            try:
                existing = self.store.stat(header.model_id)
            except StoreError:
                existing = None
            if existing is not None and existing.size_bytes == header.size_bytes:
                return pb.PushModelResponse(model=wire.model_info(existing), already_present=True)
            upload = self.store.begin(header)
            while (chunk := reader.next(self.upload_idle_s)) is not None:
                if chunk.WhichOneof("kind") != "data":
                    raise UploadCorrupt("a second header arrived in the middle of the upload")
                if len(chunk.data) > (1 << 20):
                    raise UploadCorrupt(f"chunk of {len(chunk.data)} bytes is larger than 1 MiB")
                upload.write(chunk.data)
            model = upload.commit()
            upload = None
            log.info("stored model %s (%s, %d bytes)", model.model_id[:12], model.format, model.size_bytes)
            return pb.PushModelResponse(model=wire.model_info(model), already_present=False)
        except StoreError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except UploadIdle as exc:
            log.warning("upload aborted: %s", exc)
            context.abort(
                grpc.StatusCode.ABORTED,
                f"upload aborted, nothing stored: {exc} (the agent's --upload-idle-timeout)",
            )
        finally:
            reader.close()
            if upload is not None:
                upload.abort()

    def StatModel(self, request, context):
        try:
            return wire.model_info(self.store.stat(request.model_id))
        except StoreError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))

    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[wire.model_info(m) for m in self.store.list()])

    def DeleteModel(self, request, context):
        try:
            return pb.DeleteModelResponse(deleted=self.store.delete(request.model_id))
        except StoreError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))

    # -- benchmarks -------------------------------------------------------------------
    def RunBenchmark(self, request, context):
        try:
            model = self.store.stat(request.model_id)
            get_runtime(request.runtime)
            arrays = self._arrays(request)
        except StoreError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except (UnknownRuntime, wire.WireError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            check_benchmark_request(request, self.cores)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._check_lease(request.lease_id, context)
        yield from self.slot.acquire(context, self.max_queue_wait_s)
        if not self.slot.held_by_me():  # the caller left while queued: nothing acquired, nothing to release
            return
        outcome: str | None = "error"  # None once counted
        try:
            self._check_lease(request.lease_id, context)  # a lease may have been granted while we queued
            with self.store.using(model.model_id):  # marked used; not evicted while it runs
                for event in self._run_worker(request, model, arrays, context):
                    if event.HasField("summary") and outcome is not None:
                        self.on_benchmark(event.summary.status or "ok")  # before the caller sees it
                        outcome = None
                    yield event
        except StoreError as exc:  # deleted while it waited in the queue
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except GeneratorExit:  # the caller went away mid-benchmark
            outcome = "cancelled" if outcome is not None else None
            raise
        finally:
            self.slot.release()
            if outcome is not None:
                self.on_benchmark(outcome)

    # -- leases -----------------------------------------------------------------------
    def _check_lease(self, lease_id: str, context) -> None:
        held = self.leases.blocks(lease_id)
        if held is not None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"board leased to {held.holder} for {held.expires_in_s:.0f} more s"
                + (" (this lease id is not the holder's)" if lease_id else "; acquire the lease first"),
            )

    def _lease_call(self, fn, context) -> pb.LeaseReply:
        try:
            state = fn()
        except LeaseError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.LeaseReply(
            granted=state.granted,
            lease_id=state.lease_id,
            holder=state.holder,
            expires_in_s=state.expires_in_s,
        )

    def AcquireLease(self, request, context):
        reply = self._lease_call(lambda: self.leases.acquire(request.holder, request.ttl_s), context)
        if reply.granted:
            log.info("lease granted to %s for %.0f s", request.holder, request.ttl_s)
        return reply

    def RenewLease(self, request, context):
        return self._lease_call(lambda: self.leases.renew(request.lease_id, request.ttl_s), context)

    def ReleaseLease(self, request, context):
        reply = self._lease_call(lambda: self.leases.release(request.lease_id), context)
        if reply.granted:
            log.info("lease released")
        return reply

    def _arrays(self, request) -> dict[str, np.ndarray]:
        arrays = {}
        for i, case in enumerate(request.checks):
            if not case.inputs or not case.expected:
                raise wire.WireError(f"numerics case {i} needs inputs and expected outputs")
            for j, t in enumerate(case.inputs):
                arrays[f"case{i}_in{j}"] = wire.to_array(t)
            for j, t in enumerate(case.expected):
                arrays[f"case{i}_out{j}"] = wire.to_array(t)
            for k, sign in enumerate(case.signs):
                ref = numerics.SignReference(
                    tuple(sign.shape),
                    bytes(sign.bits),
                    np.asarray(sign.fragile, dtype=np.int64),
                    np.asarray(sign.margins, dtype=np.float64),
                )
                try:
                    ref.validate()
                except ValueError as exc:
                    raise wire.WireError(f"numerics case {i}, sign reference {k}: {exc}") from None
                arrays.update(ref.as_arrays(f"case{i}_sign{k}"))
            for k, alt in enumerate(case.alternatives):
                if not 0 <= alt.layer < len(case.signs) or len(alt.expected) != len(case.expected):
                    raise wire.WireError(
                        f"numerics case {i}, alternative {k}: layer {alt.layer} of {len(case.signs)}, "
                        f"{len(alt.expected)} outputs for {len(case.expected)}"
                    )
                arrays[f"case{i}_alt{k}_meta"] = np.array(
                    [alt.layer, alt.position, alt.margin], dtype=np.float64
                )
                for j, t in enumerate(alt.expected):
                    arrays[f"case{i}_alt{k}_out{j}"] = wire.to_array(t)
        for j, t in enumerate(request.inputs):
            arrays[f"timing{j}"] = wire.to_array(t)
        return arrays

    def _run_worker(self, request, model, arrays, context) -> Iterator[pb.BenchmarkEvent]:
        job_dir = Path(tempfile.mkdtemp(prefix="job-", dir=self.work_dir))
        try:
            npz = job_dir / "arrays.npz"
            np.savez(npz, **arrays)
            threads = max(1, request.threads)
            job = {
                "runtime": request.runtime,
                "format": model.format,
                "model_path": str(self.store.path(model.model_id)),
                "threads": threads,
                "warmup_runs": request.warmup_runs,
                "min_runs": request.min_runs or 10,
                "min_duration_s": request.min_duration_s,
                "max_duration_s": request.max_duration_s or MAX_TIMED_S,
                "atol": request.atol or 1e-4,
                "rtol": request.rtol or 1e-5,
                "arrays": str(npz),
                "agent_pid": os.getpid(),
            }
            (job_dir / "job.json").write_text(json.dumps(job))
            proc = subprocess.Popen(
                [sys.executable, "-m", "biagent.worker", str(job_dir / "job.json")],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=thread_env(threads, request.runtime),
                text=True,
                bufsize=1,
            )
            yield from self._relay(proc, context)
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)

    def _relay(self, proc: subprocess.Popen, context) -> Iterator[pb.BenchmarkEvent]:
        stdout, stderr = proc.stdout, proc.stderr
        assert stdout is not None and stderr is not None  # the worker runs with stdout=stderr=PIPE
        stderr_lines: list[str] = []
        reader = threading.Thread(target=lambda: stderr_lines.extend(stderr), daemon=True)
        reader.start()
        lines: queue.Queue = queue.Queue()

        def pump_stdout() -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump_stdout, daemon=True).start()
        finished = False
        last_sent = time.monotonic()
        try:
            while True:
                try:
                    line = lines.get(timeout=0.25)
                except queue.Empty:
                    if not context.is_active():  # the host went away: stop the measurement
                        return
                    if time.monotonic() - last_sent > HEARTBEAT_S:  # alive, just busy (a long invoke)
                        last_sent = time.monotonic()
                        yield pb.BenchmarkEvent(progress=pb.Progress(phase="running", message="alive"))
                    continue
                if line is None:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue  # a runtime printing to stdout is not an event
                if msg.get("event") == "error":
                    finished = True
                    context.abort(
                        getattr(grpc.StatusCode, msg.get("code", "INTERNAL"), grpc.StatusCode.INTERNAL),
                        msg.get("message", "benchmark failed"),
                    )
                event = wire.event_from_worker(msg)
                if event is not None:
                    finished = finished or msg.get("event") == "summary"
                    last_sent = time.monotonic()
                    yield event
            code = proc.wait()
            if not finished:
                reader.join(timeout=1)
                tail = "".join(stderr_lines[-5:]).strip()
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                log.error("benchmark worker died (%s): %s", how, tail)
                context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"the runtime crashed the benchmark worker ({how}); the agent is still serving"
                    + (f": {tail.splitlines()[-1][:300]}" if tail else ""),
                )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class AgentServer:
    """A started agent: `port` is the bound port (useful with port 0)."""

    def __init__(
        self,
        store_dir: Path,
        host: str = "127.0.0.1",
        port: int = 50051,
        name: str | None = None,
        max_model_bytes: int = 2 << 30,
        max_queue_wait_s: float = 600.0,
        workers: int = 8,
        tls: ServerTls | None = None,
        token: str | None = None,
        insecure: bool = False,
        max_streams: int = 16,
        max_store_bytes: int | None = None,
        max_streams_per_client: int | None = None,
        upload_idle_s: float = 30.0,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ):
        if tls is None and not insecure and not is_loopback(host):
            raise SecurityConfigError(
                f"refusing to serve plaintext on {host}: give --tls-cert and --tls-key (see `bihost certs`), "
                "bind 127.0.0.1 and reach the board over SSH, or pass --insecure on a network you trust"
            )
        if not upload_idle_s > 0:
            raise ValueError(f"the upload idle timeout must be positive, got {upload_idle_s}")
        if metrics_port is not None and not insecure and not is_loopback(metrics_host):
            raise SecurityConfigError(
                f"refusing to serve the agent's metrics in plaintext on {metrics_host}: keep them on "
                "127.0.0.1 (scrape through an SSH tunnel) or pass --insecure on a network you trust"
            )
        # One agent per store: a second would clear the first one's uploads and jobs.
        self.lock = StoreLock(Path(store_dir))
        try:
            self.store = ModelStore(Path(store_dir), max_model_bytes, max_store_bytes)
            self.name = name or hwinfo.measure().hostname
            self.security = ("mtls" if tls and tls.client_ca_file else "tls" if tls else "plaintext") + (
                "+token" if token else ""
            )
            # The limiter bounds the agent's own calls (in all and per client); the health service is
            # outside it, and the pool keeps SPARE_THREADS beyond the limit so health always answers.
            self.limiter = CallLimiter(max_streams, max_streams_per_client or max(1, max_streams // 2))
            self.servicer = AgentServicer(
                self.store, self.name, max_queue_wait_s, upload_idle_s=upload_idle_s
            )
            interceptors: list[grpc.ServerInterceptor] = []
            self.metrics: AgentMetrics | None = None
            if metrics_port is not None:
                from .metrics import OUTCOMES, AgentMetrics

                metrics = self.metrics = AgentMetrics(self.servicer, self.name)
                interceptors.append(metrics.interceptor())  # outermost: refusals are counted too
                self.servicer.on_benchmark = lambda outcome: metrics.benchmarks.labels(
                    outcome if outcome in OUTCOMES else "error"
                ).inc()
            self.metrics_address = (metrics_host, metrics_port)
            self.metrics_server: WSGIServer | None = None
            self.metrics_port = 0
            interceptors += ([TokenInterceptor(token)] if token else []) + [LimitInterceptor(self.limiter)]
            self.server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=max(workers, max_streams + SPARE_THREADS)),
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.so_reuseport", 0),
                ],  # a second agent on this port must fail, not share it
                interceptors=interceptors,
            )
            pb_grpc.add_AgentServicer_to_server(self.servicer, self.server)
            self.health = health.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            try:
                if tls is not None:
                    self.port = self.server.add_secure_port(address, tls.credentials())
                else:
                    self.port = self.server.add_insecure_port(address)
            except RuntimeError:
                self.port = 0
            if self.port == 0:
                raise OSError(
                    f"could not bind {address}: the port is in use (another agent, or another program; "
                    f"`ss -ltnp 'sport = :{port}'` shows which) or the address is not this machine's"
                )
            self.host = host
        except BaseException:
            self.lock.release()
            raise

    def start(self) -> AgentServer:
        if self.metrics is not None:
            host, port = self.metrics_address
            server, _ = self.metrics.serve(port or 0, host)
            self.metrics_server, self.metrics_port = server, server.server_port
        self.server.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self

    def import_runtimes(self) -> AgentServer:
        """Import the runtimes now, off the request path: on a slow board (or an emulated one)
        importing onnxruntime takes seconds that the first GetBoardInfo would otherwise pay."""
        threading.Thread(target=describe_all, daemon=True, name="runtime-imports").start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        self.lock.release()

    def wait(self) -> None:
        self.server.wait_for_termination()
