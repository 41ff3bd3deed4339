"""`bihost profile`: the hardware-inference track on real boards (or the local one)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from biagent.runtimes import list_runtimes

from ..errors import UserError
from ..output import console, print_json, print_table
from .common import resolve_algorithms, resolve_names


def _runtimes(spec: str) -> list[str]:
    return resolve_names(spec, list_runtimes(), "runtime")  # the agent's registry, plugins included


def _archs(spec: str) -> list[str]:
    import bimodels

    names = (
        bimodels.list_architectures() if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    )
    for n in names:
        bimodels.get_arch_info(n)
    return names


@click.command("profile")
@click.option("--chip", "chips", default=None, help="Board name(s) from the inventory, comma-separated.")
@click.option(
    "--all-up", is_flag=True, help="Every board with an address whose agent answers its health check."
)
@click.option(
    "--arch", default="resnet18", show_default=True, help="Architecture(s), comma-separated, or 'all'."
)
@click.option("--algo", default="all", show_default=True, help="Algorithm(s), comma-separated, or 'all'.")
@click.option(
    "--runtime", default="all", show_default=True, help=f"Runtime(s): {', '.join(list_runtimes())} or 'all'."
)
@click.option("--runs", default=10, show_default=True, help="Minimum timed runs.")
@click.option("--min-duration", default=1.0, show_default=True, help="Minimum timed seconds.")
@click.option(
    "--max-duration", default=60.0, show_default=True, help="Timed phase stops after this many seconds."
)
@click.option("--warmup", default=2, show_default=True, help="Warmup runs.")
@click.option("--threads", default=1, show_default=True, help="Threads the runtime may use.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights and check inputs.")
@click.option(
    "--results",
    "results_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Results directory (default ./results or $BIHOST_RESULTS).",
)
@click.option(
    "--inventory", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Inventory file."
)
@click.option(
    "--resume", is_flag=True, help="Continue the latest (or --campaign) campaign, skipping finished rows."
)
@click.option("--campaign", default=None, help="Campaign id (with --resume: the one to continue).")
@click.option(
    "--force", is_flag=True, help="File results even if the agent's identity disagrees with the inventory."
)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option(
    "--insecure", is_flag=True, help="Allow plaintext gRPC to non-loopback boards (a network you trust)."
)
@click.option(
    "--retries", default=2, show_default=True, help="Retries of a measurement that failed transiently."
)
@click.option(
    "--retry-backoff", default=2.0, show_default=True, help="Seconds before the first retry (doubles)."
)
@click.option(
    "--lease-ttl",
    default=60.0,
    show_default=True,
    help="Seconds the board's lease lasts unless renewed (a crashed host frees it after this).",
)
@click.option(
    "--lease-wait", default=600.0, show_default=True, help="Seconds to wait for a board leased to another."
)
@click.option(
    "--stall-timeout",
    default=30.0,
    show_default=True,
    help="Give up a benchmark when the board sends nothing this long.",
)
@click.option(
    "--board-wait",
    default=120.0,
    show_default=True,
    help="After a failure, seconds a board may take to answer again (an agent restarted by its "
    "supervisor) before it is marked bad.",
)
def command(
    chips,
    all_up,
    arch,
    algo,
    runtime,
    runs,
    min_duration,
    max_duration,
    warmup,
    threads,
    seed,
    results_dir,
    inventory,
    resume,
    campaign,
    force,
    as_json,
    insecure,
    retries,
    retry_backoff,
    lease_ttl,
    lease_wait,
    stall_timeout,
    board_wait,
) -> None:
    """Export, push, run and collect: one row per (board, arch, algorithm, runtime)."""
    from ..artifacts import ArtifactCache
    from ..client import BenchmarkSettings
    from ..profile import Plan, new_campaign_id
    from ..results import ResultsStore
    from ..targets import resolve_targets

    if not chips and not all_up:
        raise UserError("name the boards: --chip NAME[,NAME...] (see `bihost board list`) or --all-up")
    if threads < 1 or runs < 1 or warmup < 0 or not min_duration >= 0 or not max_duration >= 0:
        raise UserError(
            "--threads and --runs must be at least 1, --warmup, --min-duration and --max-duration at least 0"
        )
    if (
        retries < 0
        or retry_backoff < 0
        or not 1 <= lease_ttl <= 3600
        or lease_wait < 0
        or stall_timeout <= 0
        or board_wait < 0
    ):
        raise UserError(
            "--retries, --retry-backoff, --lease-wait and --board-wait must not be negative, "
            "--lease-ttl is 1-3600 s, --stall-timeout positive"
        )
    plan = Plan(
        _archs(arch),
        resolve_algorithms(algo),
        _runtimes(runtime),
        BenchmarkSettings(
            threads=threads,
            warmup_runs=warmup,
            min_runs=runs,
            min_duration_s=min_duration,
            max_duration_s=max_duration,
        ),
        force=force,
        retries=retries,
        retry_backoff_s=retry_backoff,
        lease_ttl_s=lease_ttl,
        lease_wait_s=lease_wait,
        stall_s=stall_timeout,
        board_wait_s=board_wait,
    )
    store = ResultsStore(results_dir or Path(os.environ.get("BIHOST_RESULTS", "results")))
    if resume:
        plan.campaign = campaign or store.latest_campaign() or ""
        if not plan.campaign:
            raise UserError("nothing to resume: the results store has no campaign yet")
    else:
        plan.campaign = campaign or new_campaign_id()
    with resolve_targets(chips, all_up, inventory, insecure=insecure) as targets:
        rows = _run_with_progress(targets, plan, store, ArtifactCache(seed), as_json)
    if as_json:
        print_json([r.as_dict() for r in rows])
    else:
        _print_rows(plan.campaign, rows)
    failed = [r for r in rows if r.status == "error"]
    if failed:
        raise UserError(
            f"{len(failed)} of {len(rows)} measurements failed (first: {failed[0].board}: "
            f"{failed[0].reason}); rerun with --resume to retry them"
        )


def _run_with_progress(targets, plan, store, cache, quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..profile import run_campaign

    total = len(plan.combos())
    progress = Progress(
        TextColumn("{task.fields[board]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )
    tasks = {t.name: progress.add_task("", total=total, board=t.name) for t in targets}
    notices = Console(stderr=True, soft_wrap=True)

    def report(board: str, message: str, notice: bool = False) -> None:
        done = message.endswith((": ok", ": unsupported", ": error", ": numerics_error"))
        progress.update(tasks[board], description=message, advance=1 if done else 0)
        if (
            notice
        ):  # retries, waits, skipped boards: always said (off a terminal: on stderr, stdout may be JSON)
            out = progress.console if progress.console.is_terminal else notices
            out.print(f"[{board}] {message}", highlight=False, markup=False)
        elif not progress.console.is_terminal and not quiet:
            if done:
                console.print(f"[{board}] {message}", highlight=False, markup=False)

    with progress:
        return run_campaign(targets, plan, store, cache, report)


def _print_rows(campaign: str, rows) -> None:
    def ms(r, k):
        return f"{r.latency_ms[k]:.2f}" if r.latency_ms else ""

    def ratio(v):
        return f"{v:.2f}x" if v else ""

    print_table(
        f"campaign {campaign}",
        [
            "board",
            "arch",
            "algorithm",
            "runtime",
            "pad",
            "status",
            "median ms",
            "p90 ms",
            "runs",
            "speedup",
            "storage",
            "max err",
            "reason",
        ],
        [
            (
                f"{r.board} (emulated)" if r.emulated else r.board,
                r.arch,
                r.algorithm,
                r.runtime,
                "" if r.algorithm == "fp32" else f"{r.pad_value:g}",
                r.status,
                ms(r, "median"),
                ms(r, "p90"),
                r.runs,
                ratio(r.speedup_vs_fp32),
                ratio(r.storage_ratio),
                f"{r.max_abs_err:.1e}" if r.max_abs_err is not None else "",
                (r.reason or "")[:70],
            )
            for r in rows
        ],
    )
