"""The host's side of the wire: a typed client for one agent.

Protobuf stays in this module: callers get dataclasses and `BoardError`s that name the
board and say what to do, never a `_pb2` object or a raw grpc.RpcError.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from biagent.numerics import Case
from biproto import agent_pb2 as pb
from biproto import agent_pb2_grpc as pb_grpc

from .channel import ChannelSecurity, open_channel
from .errors import BoardError

CHUNK_BYTES = 1 << 20
# Failures a retry may cure: a crashed worker (INTERNAL), a busy board, a dropped stream.
TRANSIENT_CODES = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}
MAX_MESSAGE_BYTES = 64 << 20
SERVICE_NAME = "bibench.farm.v1.Agent"
ARM_MACHINES = ("aarch64", "arm64", "armv7l", "armv7", "armv8l")


@dataclass(frozen=True)
class AgentIdentity:
    name: str
    version: str
    hostname: str
    cpu_model: str
    machine: str
    cores: int
    features: tuple[str, ...]
    core_types: tuple[str, ...]
    os: str
    memory_bytes: int
    governor: str
    temperature_c: float | None
    runtimes: dict[str, dict] = field(default_factory=dict)  # name -> installed, version, detail, formats

    def looks_emulated(self) -> bool:
        """An ARM machine whose CPU reports x86 flags: qemu-user passes the host's /proc/cpuinfo
        through, so an AArch64 agent under emulation shows its x86 host's CPU (a real ARM
        board reports ARM features: fp, asimd, ...)."""
        x86 = {"sse2", "avx", "avx2", "avx512f"}
        return self.machine.lower() in ARM_MACHINES and bool(x86 & {f.lower() for f in self.features})

    def reported(self) -> dict:
        """The keys the inventory's identity check reads."""
        return {
            "machine": self.machine,
            "cpu_model": self.cpu_model,
            "core_types": list(self.core_types),
            "cores": self.cores,
        }


@dataclass(frozen=True)
class PushResult:
    model_id: str
    size_bytes: int
    already_present: bool


@dataclass(frozen=True)
class LeaseInfo:
    granted: bool
    lease_id: str
    holder: str  # the current holder (when not granted: who has the board)
    expires_in_s: float


@dataclass(frozen=True)
class BenchmarkSettings:
    threads: int = 1
    warmup_runs: int = 2
    min_runs: int = 10
    min_duration_s: float = 1.0
    max_duration_s: float = 60.0
    atol: float = 1e-4
    rtol: float = 1e-5


@dataclass
class BenchmarkOutcome:
    status: str  # ok | numerics_error
    reason: str
    latency_s: dict[str, float]
    samples_s: list[float]
    runs: int
    warmup_runs: int
    threads: int
    model_bytes: int
    peak_rss_bytes: int
    max_abs_errors: list[float]
    runtime: str
    runtime_version: str
    load_s: float
    governor: str
    temperature_c: float | None
    affinity: str


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _case_message(case: Case) -> pb.NumericsCase:
    signs = [
        pb.SignReference(
            shape=list(r.shape), bits=r.bits, fragile=r.fragile.tolist(), margins=r.margins.tolist()
        )
        for r in case.signs
    ]
    alternatives = [
        pb.Alternative(
            layer=a.layer, position=a.position, margin=a.margin, expected=[_tensor(o) for o in a.expected]
        )
        for a in case.alternatives or []
    ]
    return pb.NumericsCase(
        inputs=[_tensor(a) for a in case.inputs],
        expected=[_tensor(a) for a in case.expected],
        signs=signs,
        alternatives=alternatives,
    )


def _tensor(a: np.ndarray) -> pb.Tensor:
    a = np.ascontiguousarray(a)
    return pb.Tensor(
        shape=list(a.shape), dtype=a.dtype.name, data=a.astype(a.dtype.newbyteorder("<")).tobytes()
    )


class AgentClient:
    """One agent at `address`; every call has a deadline so a silent board cannot hang us."""

    def __init__(
        self,
        address: str,
        board: str = "",
        timeout_s: float = 30.0,
        security: ChannelSecurity | None = None,
        stall_s: float = 30.0,
    ):
        self.address, self.board, self.timeout_s, self.stall_s = address, board or address, timeout_s, stall_s
        self.lease_id = ""  # sent with benchmarks once a lease is held (see lease())
        self.channel = open_channel(
            address,
            self.board,
            security,
            [
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.stub = pb_grpc.AgentStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- errors -----------------------------------------------------------------------
    def _error(self, exc: grpc.RpcError, action: str) -> BoardError:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = "is `biagent serve` running?"
            if "handshake" in (details or "").lower() or "ssl" in (details or "").lower():
                hint = (
                    "the TLS handshake failed: check the board's `tls` CA, client certificate and "
                    "server_name in the inventory against the agent's --tls-cert/--client-ca"
                )
            return BoardError(
                self.board, f"agent at {self.address} is unreachable ({action}): {hint}", transient=True
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return BoardError(self.board, f"agent at {self.address} refused the call ({action}): {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return BoardError(
                self.board,
                f"agent at {self.address} did not answer {action} within the deadline",
                transient=True,
            )
        name = code.name if code is not None else "ERROR"
        return BoardError(
            self.board, f"{action} failed ({name}): {details}", transient=code in TRANSIENT_CODES
        )

    # -- calls ------------------------------------------------------------------------
    def health(self, timeout_s: float | None = None) -> bool:
        try:
            reply = self.health_stub.Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout_s or self.timeout_s
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def wait_ready(self, timeout_s: float) -> None:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise BoardError(
                self.board, f"agent at {self.address} did not come up within {timeout_s:.0f} s"
            ) from None

    def identity(self) -> AgentIdentity:
        try:
            info = self.stub.GetBoardInfo(pb.GetBoardInfoRequest(), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc, "board info") from None
        return AgentIdentity(
            name=info.agent_name,
            version=info.agent_version,
            hostname=info.hostname,
            cpu_model=info.cpu.model,
            machine=info.cpu.machine,
            cores=info.cpu.logical_cores,
            features=tuple(info.cpu.features),
            core_types=tuple(info.cpu.core_types),
            os=info.os,
            memory_bytes=info.memory_bytes,
            governor=info.governor,
            temperature_c=info.temperature_c if info.temperature_known else None,
            runtimes={
                r.name: {
                    "installed": r.installed,
                    "version": r.version,
                    "detail": r.detail,
                    "formats": list(r.formats),
                }
                for r in info.runtimes
            },
        )

    def has_model(self, model_id: str) -> bool:
        try:
            self.stub.StatModel(pb.StatModelRequest(model_id=model_id), timeout=self.timeout_s)
            return True
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise self._error(exc, "model lookup") from None

    def push(
        self, data: bytes, format: str, name: str = "", metadata: dict[str, str] | None = None
    ) -> PushResult:
        """Idempotent: a model the board already stores costs one round trip, not an upload."""
        digest = sha256(data)
        if self.has_model(digest):
            return PushResult(digest, len(data), True)

        def chunks() -> Iterator[pb.PushModelChunk]:
            yield pb.PushModelChunk(
                header=pb.ModelHeader(
                    sha256=digest, size_bytes=len(data), format=format, name=name, metadata=metadata or {}
                )
            )
            view = memoryview(data)
            for start in range(0, len(data), CHUNK_BYTES):
                yield pb.PushModelChunk(data=bytes(view[start : start + CHUNK_BYTES]))

        timeout = self.timeout_s + len(data) / (5 << 20)  # generous: 5 MB/s floor
        try:
            reply = self.stub.PushModel(chunks(), timeout=timeout)
        except grpc.RpcError as exc:
            raise self._error(exc, "model push") from None
        return PushResult(reply.model.model_id, reply.model.size_bytes, reply.already_present)

    def list_models(self) -> list[dict]:
        try:
            reply = self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc, "model list") from None
        return [
            {
                "model_id": m.model_id,
                "size_bytes": m.size_bytes,
                "format": m.format,
                "name": m.name,
                "stored_at": m.stored_at,
            }
            for m in reply.models
        ]

    def delete_model(self, model_id: str) -> bool:
        try:
            return self.stub.DeleteModel(
                pb.DeleteModelRequest(model_id=model_id), timeout=self.timeout_s
            ).deleted
        except grpc.RpcError as exc:
            raise self._error(exc, "model delete") from None

    # -- leases -----------------------------------------------------------------------
    def acquire_lease(self, holder: str, ttl_s: float) -> LeaseInfo:
        """Try once; on success the lease id rides along with every benchmark of this client."""
        reply = self._lease("acquire", self.stub.AcquireLease, pb.LeaseRequest(holder=holder, ttl_s=ttl_s))
        if reply.granted:
            self.lease_id = reply.lease_id
        return reply

    def renew_lease(self, ttl_s: float) -> LeaseInfo:
        return self._lease(
            "renew", self.stub.RenewLease, pb.LeaseRequest(lease_id=self.lease_id, ttl_s=ttl_s)
        )

    def release_lease(self) -> LeaseInfo:
        reply = self._lease("release", self.stub.ReleaseLease, pb.LeaseRequest(lease_id=self.lease_id))
        self.lease_id = ""
        return reply

    def _lease(self, action: str, rpc, request) -> LeaseInfo:
        try:  # tiny calls: a short deadline, so a hung board cannot hold up a campaign's cleanup
            r = rpc(request, timeout=min(self.timeout_s, 5.0))
        except grpc.RpcError as exc:
            raise self._error(exc, f"lease {action}") from None
        return LeaseInfo(r.granted, r.lease_id, r.holder, r.expires_in_s)

    def benchmark(
        self,
        model_id: str,
        runtime: str,
        settings: BenchmarkSettings,
        checks: Sequence[Case | tuple[list[np.ndarray], list[np.ndarray]]] = (),
        timing_inputs: Sequence[np.ndarray] = (),
        on_progress: Callable[[str, int, int, str], None] | None = None,
        deadline_s: float | None = None,
    ) -> BenchmarkOutcome:
        request = pb.BenchmarkRequest(
            model_id=model_id,
            runtime=runtime,
            threads=settings.threads,
            warmup_runs=settings.warmup_runs,
            min_runs=settings.min_runs,
            min_duration_s=settings.min_duration_s,
            max_duration_s=settings.max_duration_s,
            atol=settings.atol,
            rtol=settings.rtol,
            checks=[_case_message(c if isinstance(c, Case) else Case(*c)) for c in checks],
            inputs=[_tensor(a) for a in timing_inputs],
            lease_id=self.lease_id,
        )
        # The deadline covers queueing, loading, checks, warmup and the timed phase; the agent
        # also sends an event at least every couple of seconds, so a board that goes silent
        # (hung, SIGSTOPped, cut off) is given up after `stall_s`, not after the deadline.
        deadline = deadline_s or (self.timeout_s + 4 * settings.max_duration_s + 120)
        samples: list[float] = []
        call = self.stub.RunBenchmark(request, timeout=deadline)
        last_event, done, stalled = [time.monotonic()], threading.Event(), threading.Event()

        def watchdog() -> None:
            while not done.wait(min(1.0, self.stall_s / 4)):
                if time.monotonic() - last_event[0] > self.stall_s:
                    stalled.set()
                    call.cancel()
                    return

        threading.Thread(target=watchdog, daemon=True, name=f"stall-{self.board}").start()
        try:
            for event in call:
                last_event[0] = time.monotonic()
                kind = event.WhichOneof("event")
                if kind == "progress" and on_progress is not None:
                    p = event.progress
                    on_progress(p.phase, p.done, p.total, p.message)
                elif kind == "samples":
                    samples.extend(event.samples.latency_s)
                elif kind == "summary":
                    s = event.summary
                    lat = s.latency
                    outcome = BenchmarkOutcome(
                        status=s.status,
                        reason=s.reason,
                        latency_s={
                            "min": lat.min_s,
                            "median": lat.median_s,
                            "mean": lat.mean_s,
                            "p90": lat.p90_s,
                            "p99": lat.p99_s,
                            "std": lat.std_s,
                            "max": lat.max_s,
                        },
                        samples_s=samples,
                        runs=s.runs,
                        warmup_runs=s.warmup_runs,
                        threads=s.threads,
                        model_bytes=s.model_bytes,
                        peak_rss_bytes=s.peak_rss_bytes,
                        max_abs_errors=list(s.max_abs_errors),
                        runtime=s.runtime,
                        runtime_version=s.runtime_version,
                        load_s=s.load_s,
                        governor=s.governor,
                        temperature_c=s.temperature_c if s.temperature_known else None,
                        affinity=s.affinity,
                    )
                    try:  # let the agent end the call itself (cleanup, status OK), not see it cancelled
                        for _ in call:
                            last_event[0] = time.monotonic()
                    except grpc.RpcError:  # the summary is what counts; a late error changes nothing
                        pass
                    return outcome
        except grpc.RpcError as exc:
            if stalled.is_set():
                raise BoardError(
                    self.board,
                    f"agent at {self.address} stopped answering: nothing for "
                    f"{self.stall_s:.0f} s during the benchmark ({runtime}); hung, "
                    "stopped or cut off",
                    transient=True,
                ) from None
            raise self._error(exc, f"benchmark ({runtime})") from None
        finally:
            done.set()
        raise BoardError(
            self.board, f"benchmark stream from {self.address} ended without a summary", transient=True
        )
