"""`bihost matrix`: the algorithm x runtime deployability matrix, computed by exporting."""

from __future__ import annotations

import click

from ..output import print_json, print_table
from .common import resolve_algorithms
from .profile import _runtimes


@click.command("matrix")
@click.option("--arch", default="resnet18", show_default=True, help="Architecture.")
@click.option("--algo", default="all", show_default=True, help="Algorithm(s), comma-separated, or 'all'.")
@click.option("--runtime", default="all", show_default=True, help="Runtime(s), comma-separated, or 'all'.")
@click.option(
    "--pad-value",
    type=click.Choice(["0", "1", "-1"]),
    default="0",
    show_default=True,
    help="Binarize with this padding value (LCE is native with 1, daBNN needs -1).",
)
@click.option("--no-check", is_flag=True, help="Export only; do not run installed runtimes against torch.")
@click.option(
    "--json", "as_json", is_flag=True, help='{algorithm: {runtime: {"status", "reason", "extra_ops"}}}.'
)
def command(arch: str, algo: str, runtime: str, pad_value: str, no_check: bool, as_json: bool) -> None:
    """Which algorithm runs on which runtime: native, composite (extra float ops) or unsupported."""
    import bimodels

    from ..deployability import matrix

    bimodels.get_arch_info(arch)
    runtimes = _runtimes(runtime)
    cells = matrix(arch, resolve_algorithms(algo), runtimes, float(pad_value), check=not no_check)
    if as_json:
        print_json({a: {r: c.as_dict() for r, c in row.items()} for a, row in cells.items()})
        return

    def show(c) -> str:
        text = f"composite +{len(c.extra_ops)} ops" if c.status == "composite" else c.status
        return text + (" ✓" if c.checked and c.status != "unsupported" else "")

    print_table(
        f"deployability: {arch} (pad_value {pad_value}; ✓ = numerics checked here)",
        ["algorithm", *runtimes],
        [(a, *(show(row[r]) for r in runtimes)) for a, row in cells.items()],
    )
    for a, row in cells.items():
        for r, c in row.items():
            if c.reason:
                print(f"  {a}/{r}: {c.reason[:220]}")
    unchecked = {r: c.unchecked for row in cells.values() for r, c in row.items() if c.unchecked}
    for r, why in unchecked.items():  # once per runtime: every cell of it has the same cause
        print(f"  {r}: not checked against torch: {why[:400]}")
