"""`bihost report`: the store's numbers as one self-contained HTML page with PNG figures."""

from __future__ import annotations

from pathlib import Path

import click

from .common import resolve_algorithms
from .results import existing_store, results_dir_option


@click.command("report")
@results_dir_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where index.html and figures/ go (default: <results>/report).",
)
@click.option(
    "--scale",
    type=click.Choice(["quick", "default", "paper"]),
    default=None,
    help="Which scale's runs to show (default: that of the newest training or grid run).",
)
@click.option("--seed", default=0, show_default=True, help="Which seed's runs to show.")
@click.option("--algo", default="all", show_default=True, help="Algorithm(s), comma-separated, or 'all'.")
def command(results_dir: Path, out: Path | None, scale: str | None, seed: int, algo: str) -> None:
    """Main table, per-track figures, hardware and theory-vs-measurement, each captioned with its rows."""
    import matplotlib

    matplotlib.use("Agg")
    from ..report import select, write_report

    data = select(existing_store(results_dir), scale=scale, seed=seed, algorithms=resolve_algorithms(algo))
    report = write_report(data, out or results_dir / "report")
    click.echo(f"{report.index} ({len(report.figures)} figures, {data.scale or 'no'} scale, seed {seed})")
    for why in report.missing:
        click.echo(f"not drawn: {why}", err=True)
