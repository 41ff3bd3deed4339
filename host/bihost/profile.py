"""A profiling campaign: every (arch, algorithm, runtime) on every chosen board.

Boards run concurrently, one measurement at a time per board (the agent serialises too).
Each finished measurement is stored before the next starts, so a crash loses at most the
one in flight and `--resume` continues where the campaign stopped.
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from .artifacts import FP32, ArtifactCache, NoExporter, pad_value_for
from .channel import ChannelSecurity
from .client import AgentClient, AgentIdentity, BenchmarkSettings
from .errors import BoardError
from .records import BoardState, Measurement
from .results import DONE_STATUSES

# (board, message, notice=False): notices (retries, waits, boards skipped or marked bad) are
# shown to the operator even when progress is not; the rest is progress-bar material.
ProgressFn = Callable[..., None]


class Store(Protocol):
    def add(self, m: Measurement) -> None: ...
    def done_keys(self, campaign: str) -> set[tuple]: ...
    def rows(self, campaign: str | None = None, board: str | None = None) -> list[Measurement]: ...
    def board_state(self, board: str) -> BoardState: ...
    def set_board_state(self, board: str, state: str, reason: str = "") -> None: ...
    def start_campaign(self, campaign: str, board: str, kind: str, planned: int, done: int = 0) -> None: ...
    def campaign_step(self, campaign: str, board: str, kind: str, ok: bool) -> None: ...
    def finish_campaign(self, campaign: str, board: str, kind: str) -> None: ...


@dataclass(frozen=True)
class Target:
    """A board to profile, resolved from the inventory: where its agent answers."""

    name: str
    chip: str
    address: str
    check_identity: Callable[[dict], str | None] = lambda reported: None
    security: ChannelSecurity | None = None  # TLS / token / --insecure for this board's channel
    emulated: bool = False  # the inventory declares its CPU emulated (qemu-user)


@dataclass
class Plan:
    archs: list[str]
    algorithms: list[str]
    runtimes: list[str]
    settings: BenchmarkSettings = field(default_factory=BenchmarkSettings)
    campaign: str = ""
    force: bool = False
    retries: int = 2  # per measurement, for failures a retry may cure (BoardError.transient)
    retry_backoff_s: float = 2.0  # first wait; doubles each retry
    lease_ttl_s: float = 60.0  # renewed every third of it; a crashed host frees the board after this
    lease_wait_s: float = 600.0  # how long to wait for another campaign's lease
    stall_s: float = 30.0  # a benchmark that sends nothing this long is given up (hung board)
    # After a transient failure, how long a board may take to answer its health check again
    # before it is filed as down: covers an agent restarted by its supervisor, or by hand.
    board_wait_s: float = 120.0

    def combos(self) -> list[tuple[str, str, str]]:
        """(arch, algorithm, runtime), the FP32 baseline of each arch first."""
        out = []
        for arch in self.archs:
            out.append((arch, FP32, "onnxruntime"))
            out += [(arch, algo, rt) for algo in self.algorithms for rt in self.runtimes]
        return out


def new_campaign_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


class BoardRun:
    """All measurements of one board, in order, each stored as soon as it ends."""

    def __init__(self, target: Target, plan: Plan, cache: ArtifactCache, store: Store, progress: ProgressFn):
        self.target, self.plan, self.cache, self.store, self.progress = target, plan, cache, store, progress
        self.rows: list[Measurement] = []
        self.identity: AgentIdentity | None = None
        self.forced = False
        self.emulated = target.emulated

    def row(
        self, arch: str, algorithm: str, runtime: str, status: str, reason: str = "", **kw
    ) -> Measurement:
        ident = self.identity
        return Measurement(
            campaign=self.plan.campaign,
            board=self.target.name,
            chip=self.target.chip,
            arch=arch,
            algorithm=algorithm,
            runtime=runtime,
            status=status,
            reason=reason,
            threads=self.plan.settings.threads,
            pad_value=pad_value_for(runtime, algorithm),
            agent_version=ident.version if ident else "",
            agent={"cpu_model": ident.cpu_model, "machine": ident.machine, "cores": ident.cores}
            if ident
            else {},
            forced=self.forced,
            emulated=self.emulated,
            created_at=time.time(),
            **kw,
        )

    def file(self, m: Measurement) -> None:
        self.store.add(m)
        self.store.campaign_step(m.campaign, m.board, "profile", ok=m.status in DONE_STATUSES)
        self.rows.append(m)
        self.progress(self.target.name, f"{m.arch}/{m.algorithm}/{m.runtime}: {m.status}")

    def run(self) -> list[Measurement]:
        done = self.store.done_keys(self.plan.campaign)
        todo = [
            c
            for c in self.plan.combos()
            if (self.target.name, c[0], c[1], c[2], self.plan.campaign, self.plan.settings.threads)
            not in done
        ]
        if not todo:
            return []
        name = self.target.name
        state = self.store.board_state(name)
        if state.state == "maintenance":
            self.progress(
                name,
                f"in maintenance ({state.reason or 'no reason given'}): not scheduled; "
                f"`bihost board maintenance {name} --off` returns it",
                notice=True,
            )
            return []
        planned = len(self.plan.combos())
        self.store.start_campaign(self.plan.campaign, name, "profile", planned, done=planned - len(todo))
        try:
            return self._run_on_board(todo)
        finally:
            self.store.finish_campaign(self.plan.campaign, name, "profile")

    def _run_on_board(self, todo: list[tuple[str, str, str]]) -> list[Measurement]:
        name = self.target.name
        state = self.store.board_state(name)
        client = AgentClient(
            self.target.address, name, security=self.target.security, stall_s=self.plan.stall_s
        )
        try:
            if state.state == "bad":  # marked down earlier: only a passing health check brings it back
                if not client.health(timeout_s=5):
                    self.progress(
                        name, f"still down ({state.reason}): health check failed, not scheduled", notice=True
                    )
                    return []
                self.store.set_board_state(name, "good", "health check passed")
            try:
                self._connect(client)
                lease = _LeaseKeeper(client, self.plan, self.progress, name)
                lease.acquire()
            except BoardError as exc:
                if exc.transient:
                    self.store.set_board_state(name, "bad", str(exc))
                for arch, algo, rt in todo:
                    self.file(self.row(arch, algo, rt, "error", str(exc)))
                return self.rows
            try:
                self._measure_all(client, lease, todo)
            finally:
                lease.release()
        finally:
            client.close()
        return self.rows

    def _measure_all(
        self, client: AgentClient, lease: _LeaseKeeper, todo: list[tuple[str, str, str]]
    ) -> None:
        name = self.target.name
        for i, (arch, algo, rt) in enumerate(todo):
            down = self._measure_with_retries(client, lease, arch, algo, rt)
            if down or (self.rows[-1].status == "error" and not client.health(timeout_s=5)):
                reason = f"stopped answering during {arch}/{algo}/{rt}"
                self.store.set_board_state(name, "bad", reason)
                self.progress(
                    name, f"marked bad: {reason}; its other measurements are left for --resume", notice=True
                )
                for a, g, r in todo[i + 1 :]:  # report the rest, do not hang on a dead board
                    self.file(
                        self.row(
                            a,
                            g,
                            r,
                            "error",
                            f"not measured: {name} {reason} (marked bad; `--resume` retries once it answers)",
                        )
                    )
                return

    def _measure_with_retries(
        self, client: AgentClient, lease: _LeaseKeeper, arch: str, algo: str, rt: str
    ) -> bool:
        """Measure and file one row, retrying transient failures; True when the board is down
        (it did not answer its health check within `board_wait_s` after a failure)."""
        name = self.target.name
        for attempt in range(self.plan.retries + 1):
            try:
                lease.check()
                self.file(self.measure(client, arch, algo, rt))
                return False
            except BoardError as exc:
                if attempt == self.plan.retries or not exc.transient:
                    self.file(self.row(arch, algo, rt, "error", str(exc)))
                    return False
                delay = self.plan.retry_backoff_s * 2**attempt
                self.progress(
                    name,
                    f"{arch}/{algo}/{rt}: failed ({exc}); retry {attempt + 1} of "
                    f"{self.plan.retries} after {delay:.1f} s",
                    notice=True,
                )
                time.sleep(delay)
                if not self._wait_healthy(client, f"{arch}/{algo}/{rt}"):
                    self.file(
                        self.row(
                            arch,
                            algo,
                            rt,
                            "error",
                            f"{exc}; then no answer to health checks for "
                            f"{self.plan.board_wait_s:.0f} s (--board-wait)",
                        )
                    )
                    return True
                lease.regain()  # an agent that restarted has forgotten our lease
        return False

    def _wait_healthy(self, client: AgentClient, label: str) -> bool:
        """Poll the board's health check for up to `board_wait_s`, saying so while it waits."""
        if client.health(timeout_s=2):
            return True
        start = time.monotonic()
        end = start + self.plan.board_wait_s
        self.progress(
            self.target.name,
            f"{label}: waiting up to {self.plan.board_wait_s:.0f} s for "
            "the board to answer again (--board-wait)",
            notice=True,
        )
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            if client.health(timeout_s=2):
                self.progress(self.target.name, f"back after {time.monotonic() - start:.0f} s", notice=True)
                return True
        return False

    def _connect(self, client: AgentClient) -> None:
        self.progress(self.target.name, f"connecting to {self.target.address}")
        self.identity = client.identity()
        mismatch = self.target.check_identity(self.identity.reported())
        if mismatch:
            if not self.plan.force:
                raise BoardError(
                    self.target.name,
                    f"identity mismatch, results refused: {mismatch} "
                    "(fix inventory.yaml, or pass --force to file them anyway)",
                )
            self.forced = True
        if self.identity.looks_emulated() and not self.emulated:
            self.emulated = True
            self.progress(
                self.target.name,
                f"the agent runs on an emulated CPU ({self.identity.machine} reporting this host's x86 "
                "flags): its rows are filed as emulated; declare `emulated: true` for this board in the inventory",
                notice=True,
            )

    def _fp32_baseline(self, arch: str) -> Measurement | None:
        for m in [*self.rows, *self.store.rows(self.plan.campaign, self.target.name)]:
            if (
                m.arch == arch
                and m.algorithm == FP32
                and m.status == "ok"
                and m.threads == self.plan.settings.threads
            ):
                return m
        return None

    def measure(self, client: AgentClient, arch: str, algo: str, runtime: str) -> Measurement:
        from bimodels import ExportError

        status = (self.identity.runtimes if self.identity else {}).get(runtime)
        if status is None or not status["installed"]:
            detail = status["detail"] if status else "the agent does not know this runtime"
            return self.row(
                arch, algo, runtime, "unsupported", f"runtime {runtime} not available on this board: {detail}"
            )
        try:
            self.progress(self.target.name, f"{arch}/{algo}/{runtime}: exporting")
            artifact = self.cache.artifact(arch, algo, runtime)
        except (ExportError, NoExporter) as exc:
            return self.row(arch, algo, runtime, "unsupported", str(exc))
        case = self.cache.case(arch, algo, pad_value_for(runtime, algo))
        self.progress(self.target.name, f"{arch}/{algo}/{runtime}: pushing {len(artifact.data) / 1e6:.1f} MB")
        pushed = client.push(
            artifact.data, artifact.format, f"{arch}-{algo}", {"arch": arch, "algorithm": algo}
        )

        def on_progress(phase: str, done: int, total: int, message: str) -> None:
            self.progress(self.target.name, f"{arch}/{algo}/{runtime}: {phase} {message}".rstrip())

        out = client.benchmark(
            pushed.model_id, runtime, self.plan.settings, checks=case.checks, on_progress=on_progress
        )
        if out.status == "numerics_error" and self.cache.add_alternatives(case):
            # The runtime could not show its sign inputs: once more, with torch's single-flip
            # alternatives, which explain a rounding flip (docs/numerics.md, rule 3).
            self.progress(
                self.target.name,
                f"{arch}/{algo}/{runtime}: mismatch; checking torch's rounding-flip alternatives",
            )
            out = client.benchmark(
                pushed.model_id, runtime, self.plan.settings, checks=case.checks, on_progress=on_progress
            )
        errors = sorted(out.max_abs_errors)
        env = {
            "governor": out.governor,
            "temperature_c": out.temperature_c,
            "affinity": out.affinity,
            "load_s": out.load_s,
        }
        row = self.row(
            arch,
            algo,
            runtime,
            out.status,
            out.reason,
            latency_ms={k: v * 1e3 for k, v in out.latency_s.items()},
            runs=out.runs,
            warmup=out.warmup_runs,
            model_sha256=pushed.model_id,
            model_bytes=out.model_bytes,
            peak_rss_bytes=out.peak_rss_bytes,
            max_abs_err=errors[-1] if errors else None,
            runtime_version=out.runtime_version,  # the largest
            samples_ms=[s * 1e3 for s in out.samples_s],
        )
        row.agent.update(env)  # where the OS shows them: governor, temperature, affinity
        base = row if algo == FP32 else self._fp32_baseline(arch)
        if base is not None:
            row.fp32_model_bytes = base.model_bytes
            row.storage_ratio = base.model_bytes / row.model_bytes if row.model_bytes else None
            # an emulated CPU's latencies say nothing about a chip: no speedup from them
            if row.status == "ok" and base.latency_ms.get("median") and not self.emulated:
                row.speedup_vs_fp32 = base.latency_ms["median"] / row.latency_ms["median"]
                row.fp32_runtime = base.runtime
        return row


class _LeaseKeeper:
    """Holds the board's lease for a campaign: waits for another holder, renews in the
    background every third of the TTL, and says so when the lease was lost."""

    def __init__(self, client: AgentClient, plan: Plan, progress: ProgressFn, board: str):
        self.client, self.plan, self.progress, self.board = client, plan, progress, board
        self.holder = (
            f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} campaign {plan.campaign}"[:200]
        )
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread: threading.Thread | None = None
        self._announced: set[str] = set()

    def acquire(self) -> None:
        end = time.monotonic() + self.plan.lease_wait_s
        while True:
            got = self.client.acquire_lease(self.holder, self.plan.lease_ttl_s)
            if got.granted:
                break
            if time.monotonic() >= end:
                raise BoardError(
                    self.board,
                    f"leased to {got.holder} for {got.expires_in_s:.0f} more s; gave up "
                    f"after waiting {self.plan.lease_wait_s:.0f} s (--lease-wait)",
                )
            self.progress(
                self.board,
                f"waiting for the board: leased to {got.holder} "
                f"({got.expires_in_s:.0f} s left unless renewed)",
                notice=got.holder not in self._announced,
            )  # once per holder, not every poll
            self._announced.add(got.holder)
            time.sleep(min(2.0, max(0.2, got.expires_in_s)))
        self._lost = None
        if self._thread is None:
            self._thread = threading.Thread(target=self._renew, daemon=True, name=f"lease-{self.board}")
            self._thread.start()

    def regain(self) -> None:
        """After the agent came back: renew if it still knows us, else acquire again."""
        try:
            if not self.client.renew_lease(self.plan.lease_ttl_s).granted:
                self.acquire()
            self._lost = None
        except BoardError as exc:
            self._lost = str(exc)

    def _renew(self) -> None:
        while not self._stop.wait(self.plan.lease_ttl_s / 3):
            try:
                if not self.client.renew_lease(self.plan.lease_ttl_s).granted:
                    self._lost = (
                        "the board's lease lapsed (the agent restarted, or we were too slow to renew)"
                    )
            except BoardError as exc:  # unreachable for now: the measurement will notice and retry
                self._lost = str(exc)

    def check(self) -> None:
        if self._lost is not None:
            self.regain()
            if self._lost is not None:
                raise BoardError(self.board, f"lease lost: {self._lost}", transient=True)

    def release(self) -> None:
        self._stop.set()
        try:
            self.client.release_lease()
        except BoardError:
            pass  # the agent is gone; the lease lapses by itself


def run_campaign(
    targets: Iterable[Target],
    plan: Plan,
    store: Store,
    cache: ArtifactCache | None = None,
    progress: ProgressFn = lambda board, msg, notice=False: None,
) -> list[Measurement]:
    targets = list(targets)
    cache = cache or ArtifactCache()
    if not plan.campaign:
        plan.campaign = new_campaign_id()
    runs = [BoardRun(t, plan, cache, store, progress) for t in targets]
    with ThreadPoolExecutor(max_workers=max(1, len(runs))) as pool:
        results = list(pool.map(lambda r: r.run(), runs))
    return [m for rows in results for m in rows]
