"""A profiling campaign: every (arch, algorithm, runtime) on every chosen board.

Boards run concurrently, one measurement at a time per board (the agent serialises too).
Each finished measurement is stored before the next starts, so a crash loses at most the
one in flight and `--resume` continues where the campaign stopped.
"""
from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

from .artifacts import FP32, ArtifactCache, NoExporter
from .client import AgentClient, AgentIdentity, BenchmarkSettings
from .errors import BoardError
from .records import Measurement

ProgressFn = Callable[[str, str], None]  # (board, message)


class Store(Protocol):
    def add(self, m: Measurement) -> None: ...
    def done_keys(self, campaign: str) -> set[tuple]: ...
    def rows(self, campaign: str | None = None, board: str | None = None) -> list[Measurement]: ...


@dataclass(frozen=True)
class Target:
    """A board to profile, resolved from the inventory: where its agent answers."""

    name: str
    chip: str
    address: str
    check_identity: Callable[[dict], str | None] = lambda reported: None


@dataclass
class Plan:
    archs: list[str]
    algorithms: list[str]
    runtimes: list[str]
    settings: BenchmarkSettings = field(default_factory=BenchmarkSettings)
    campaign: str = ""
    force: bool = False

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

    def row(self, arch: str, algorithm: str, runtime: str, status: str, reason: str = "", **kw) -> Measurement:
        ident = self.identity
        return Measurement(
            campaign=self.plan.campaign, board=self.target.name, chip=self.target.chip, arch=arch,
            algorithm=algorithm, runtime=runtime, status=status, reason=reason, threads=self.plan.settings.threads,
            agent_version=ident.version if ident else "",
            agent={"cpu_model": ident.cpu_model, "machine": ident.machine, "cores": ident.cores} if ident else {},
            forced=self.forced, created_at=time.time(), **kw,
        )

    def file(self, m: Measurement) -> None:
        self.store.add(m)
        self.rows.append(m)
        self.progress(self.target.name, f"{m.arch}/{m.algorithm}/{m.runtime}: {m.status}")

    def run(self) -> list[Measurement]:
        done = self.store.done_keys(self.plan.campaign)
        todo = [c for c in self.plan.combos()
                if (self.target.name, c[0], c[1], c[2], self.plan.campaign, self.plan.settings.threads) not in done]
        if not todo:
            return []
        client = AgentClient(self.target.address, self.target.name)
        try:
            self._connect(client)
        except BoardError as exc:
            for arch, algo, rt in todo:
                self.file(self.row(arch, algo, rt, "error", str(exc)))
            client.close()
            return self.rows
        try:
            for i, (arch, algo, rt) in enumerate(todo):
                try:
                    self.file(self.measure(client, arch, algo, rt))
                except BoardError as exc:
                    self.file(self.row(arch, algo, rt, "error", str(exc)))
                    if not client.health(timeout_s=5):  # the board is gone: report the rest, do not hang
                        for a, g, r in todo[i + 1:]:
                            self.file(self.row(a, g, r, "error", f"not measured: {self.target.name} stopped answering"))
                        break
        finally:
            client.close()
        return self.rows

    def _connect(self, client: AgentClient) -> None:
        self.progress(self.target.name, f"connecting to {self.target.address}")
        self.identity = client.identity()
        mismatch = self.target.check_identity(self.identity.reported())
        if mismatch:
            if not self.plan.force:
                raise BoardError(self.target.name, f"identity mismatch, results refused: {mismatch} "
                                 "(fix inventory.yaml, or pass --force to file them anyway)")
            self.forced = True

    def _fp32_baseline(self, arch: str) -> Measurement | None:
        for m in [*self.rows, *self.store.rows(self.plan.campaign, self.target.name)]:
            if m.arch == arch and m.algorithm == FP32 and m.status == "ok" and m.threads == self.plan.settings.threads:
                return m
        return None

    def measure(self, client: AgentClient, arch: str, algo: str, runtime: str) -> Measurement:
        from bimodels import ExportError

        status = (self.identity.runtimes if self.identity else {}).get(runtime)
        if status is None or not status["installed"]:
            detail = status["detail"] if status else "the agent does not know this runtime"
            return self.row(arch, algo, runtime, "unsupported", f"runtime {runtime} not available on this board: {detail}")
        try:
            self.progress(self.target.name, f"{arch}/{algo}/{runtime}: exporting")
            artifact = self.cache.artifact(arch, algo, runtime)
        except (ExportError, NoExporter) as exc:
            return self.row(arch, algo, runtime, "unsupported", str(exc))
        case = self.cache.case(arch, algo)
        self.progress(self.target.name, f"{arch}/{algo}/{runtime}: pushing {len(artifact.data) / 1e6:.1f} MB")
        pushed = client.push(artifact.data, artifact.format, f"{arch}-{algo}", {"arch": arch, "algorithm": algo})

        def on_progress(phase: str, done: int, total: int, message: str) -> None:
            self.progress(self.target.name, f"{arch}/{algo}/{runtime}: {phase} {message}".rstrip())

        out = client.benchmark(pushed.model_id, runtime, self.plan.settings, checks=case.checks,
                               on_progress=on_progress)
        errors = sorted(out.max_abs_errors)
        env = {"governor": out.governor, "temperature_c": out.temperature_c, "affinity": out.affinity,
               "load_s": out.load_s}
        row = self.row(
            arch, algo, runtime, out.status, out.reason,
            latency_ms={k: v * 1e3 for k, v in out.latency_s.items()}, runs=out.runs, warmup=out.warmup_runs,
            model_sha256=pushed.model_id, model_bytes=out.model_bytes, peak_rss_bytes=out.peak_rss_bytes,
            max_abs_err=errors[len(errors) // 2] if errors else None, runtime_version=out.runtime_version,
            samples_ms=[s * 1e3 for s in out.samples_s],
        )
        row.agent.update(env)  # where the OS shows them: governor, temperature, affinity
        base = row if algo == FP32 else self._fp32_baseline(arch)
        if base is not None:
            row.fp32_model_bytes = base.model_bytes
            row.storage_ratio = base.model_bytes / row.model_bytes if row.model_bytes else None
            if row.status == "ok" and base.latency_ms.get("median"):
                row.speedup_vs_fp32 = base.latency_ms["median"] / row.latency_ms["median"]
        return row


def run_campaign(targets: Iterable[Target], plan: Plan, store: Store, cache: ArtifactCache | None = None,
                 progress: ProgressFn = lambda board, msg: None) -> list[Measurement]:
    targets = list(targets)
    cache = cache or ArtifactCache()
    if not plan.campaign:
        plan.campaign = new_campaign_id()
    runs = [BoardRun(t, plan, cache, store, progress) for t in targets]
    with ThreadPoolExecutor(max_workers=max(1, len(runs))) as pool:
        results = list(pool.map(lambda r: r.run(), runs))
    return [m for rows in results for m in rows]
