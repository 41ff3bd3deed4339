"""`bihost results`: read the results store as a table, CSV, JSON or Parquet."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import click

from ..errors import UserError
from ..output import print_table
from ..records import Measurement
from ..results import FILENAME, ResultsStore

FORMATS = ("table", "csv", "json", "parquet")


def existing_store(results_dir: Path) -> ResultsStore:
    """The store a reading command reports on; a path without one is an error, never a new empty store."""
    if not (results_dir / FILENAME).exists():
        raise UserError(
            f"no results store at {results_dir / FILENAME}: pass the --results folder that "
            "`bihost profile` or `bihost bench` wrote (or set BIHOST_RESULTS)"
        )
    return ResultsStore(results_dir)


def results_dir_option(f):  # shared with `bihost metrics serve` so both find the same store
    return click.option(
        "--results",
        "results_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default="results",
        envvar="BIHOST_RESULTS",
        show_default=True,
        help="Results directory (env BIHOST_RESULTS).",
    )(f)


@click.command("results")
@results_dir_option
@click.option("--campaign", help="Campaign id (default: the most recently written one).")
@click.option("--all", "all_campaigns", is_flag=True, help="Rows of every campaign.")
@click.option("--board", help="Only this board.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to FILE instead of stdout (required for parquet).",
)
@click.option("--samples", is_flag=True, help="Include the raw latency samples (csv, json, parquet).")
def command(
    results_dir: Path,
    campaign: str | None,
    all_campaigns: bool,
    board: str | None,
    fmt: str,
    output: Path | None,
    samples: bool,
) -> None:
    """Stored measurements: latency, speedup, storage and status per board, model and runtime."""
    _check_format(fmt, output)
    if campaign and all_campaigns:
        raise UserError("--campaign and --all exclude each other")
    if not (results_dir / FILENAME).exists():  # reading must not create an empty store
        _nothing(f"no results in {results_dir}")
        return
    store = ResultsStore(results_dir)
    if not all_campaigns:
        known = store.campaigns()
        if campaign is None:
            campaign = known[0] if known else None
            if campaign is None:
                _nothing(f"no results in {results_dir}")
                return
        elif campaign not in known:
            raise UserError(
                f"unknown campaign {campaign!r} in {results_dir}; known: {', '.join(known) or 'none'}"
            )
    scope = "all campaigns" if all_campaigns else f"campaign {campaign}"
    rows = store.rows(campaign=campaign, board=board)
    if not rows:
        _nothing(f"no results for board {board} in {scope}" if board else f"no results in {scope}")
        return
    if fmt == "table":
        _table(rows, scope, with_campaign=all_campaigns)
    elif fmt == "json":
        _write(output, json.dumps([m.as_dict(samples=samples) for m in rows], indent=2) + "\n", len(rows))
    else:
        frame = store.frame(campaign=campaign, board=board, samples=samples)
        if fmt == "csv":
            _write(output, frame.to_csv(index=False), len(rows))
        else:
            frame.to_parquet(output, engine="pyarrow", index=False)
            click.echo(f"wrote {len(rows)} rows to {output}", err=True)


def _check_format(fmt: str, output: Path | None) -> None:
    """Refuse before touching the store: a missing engine should not surface after a long read."""
    if fmt == "parquet":
        if importlib.util.find_spec("pyarrow") is None:
            raise UserError("parquet output needs pyarrow: pip install pyarrow")
        if output is None:
            raise UserError("parquet output needs --output FILE")
    if fmt == "table" and output is not None:
        raise UserError("--output needs --format csv, json or parquet")


def _nothing(message: str) -> None:
    # stderr: an empty CSV/JSON on stdout stays empty for the script reading it.
    click.echo(message, err=True)


def _write(output: Path | None, text: str, n: int) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text)
    click.echo(f"wrote {n} rows to {output}", err=True)


def _table(rows: list[Measurement], scope: str, with_campaign: bool) -> None:
    columns = [
        "board",
        "chip",
        "arch",
        "algorithm",
        "runtime",
        "threads",
        "pad",
        "status",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "speedup",
        "storage",
        "size",
        "max err",
        "reason",
    ]
    table = []
    for m in rows:
        lat = m.latency_ms
        table.append(
            [
                f"{m.board} (emulated)" if m.emulated else m.board,
                m.chip,
                m.arch,
                m.algorithm,
                m.runtime,
                m.threads,
                "" if m.algorithm == "fp32" else f"{m.pad_value:g}",
                m.status,
                _ms(lat.get("median")),
                _ms(lat.get("p90")),
                _ms(lat.get("p99")),
                _ratio(m.speedup_vs_fp32),
                _ratio(m.storage_ratio),
                m.model_bytes or "",
                "" if m.max_abs_err is None else f"{m.max_abs_err:.1e}",
                m.reason,
            ]
        )
        if with_campaign:
            table[-1].insert(0, m.campaign)
    print_table(f"results: {scope}", ["campaign", *columns] if with_campaign else columns, table)


def _ms(v: float | None) -> str:
    """Three significant figures whatever the scale: 0.0123, 1.23, 123."""
    if v is None:
        return ""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _ratio(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}x"
