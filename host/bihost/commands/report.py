"""`bihost report`: the store's numbers as one self-contained HTML page with PNG figures."""
from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import UserError
from ..results import FILENAME
from .common import resolve_algorithms


@click.command("report")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Results directory (default ./results or $BIHOST_RESULTS).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where index.html and figures/ go (default: <results>/report).")
@click.option("--scale", type=click.Choice(["quick", "default", "paper"]), default=None,
              help="Which scale's runs to show (default: that of the newest training or grid run).")
@click.option("--seed", default=0, show_default=True, help="Which seed's runs to show.")
@click.option("--algo", default="all", show_default=True, help="Algorithm(s), comma-separated, or 'all'.")
def command(results_dir: Path | None, out: Path | None, scale: str | None, seed: int, algo: str) -> None:
    """Main table, per-track figures, hardware and theory-vs-measurement, each captioned with its rows."""
    import matplotlib

    matplotlib.use("Agg")
    from ..report import select, write_report
    from ..results import ResultsStore

    results_dir = results_dir or Path(os.environ.get("BIHOST_RESULTS", "results"))
    if not (results_dir / FILENAME).exists():  # reading must not create an empty store
        raise UserError(f"no results store at {results_dir / FILENAME}: run `bihost bench` or `bihost profile` "
                        "first, or pass --results")
    data = select(ResultsStore(results_dir), scale=scale, seed=seed, algorithms=resolve_algorithms(algo))
    report = write_report(data, out or results_dir / "report")
    click.echo(f"{report.index} ({len(report.figures)} figures, {data.scale or 'no'} scale, seed {seed})")
    for why in report.missing:
        click.echo(f"not drawn: {why}", err=True)
