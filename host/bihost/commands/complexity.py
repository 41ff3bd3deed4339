"""`bihost complexity`: the theoretical complexity track for one architecture."""

from __future__ import annotations

import click

from ..output import print_json, print_table
from .common import build_model, resolve_algorithms


@click.command("complexity")
@click.option("--arch", default="resnet18", show_default=True, help="Architecture (see `bihost models`).")
@click.option(
    "--algo", default="all", show_default=True, help="Algorithm name, comma-separated names, or 'all'."
)
@click.option("--layers", is_flag=True, help="Include per-layer counts.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(arch: str, algo: str, layers: bool, as_json: bool) -> None:
    """Params, FLOPs, BOPs and BiBench's compression/speedup ratios per algorithm."""
    from bimodels.complexity import complexity

    reports = []
    fp = build_model(arch, None, seed=0)
    for name in resolve_algorithms(algo):
        reports.append(complexity(build_model(arch, name, seed=0, base=fp)))
    if as_json:
        print_json({"arch": arch, "models": [r.as_dict(layers=layers) for r in reports]})
        return
    columns = [
        "algorithm",
        "params",
        "params_bin",
        "params_fp",
        "FLOPs",
        "BOPs",
        "FLOPs_fp",
        "extra FLOPs",
        "r_c",
        "r_s",
        "overall",
    ]
    rows = [
        (
            r.algorithm,
            r.params,
            r.params_bin,
            r.params_fp,
            r.flops,
            r.bops,
            r.flops_fp,
            r.extra_flops,
            r.compression_ratio,
            r.speedup_ratio,
            r.overall,
        )
        for r in reports
    ]
    print_table(f"theoretical complexity: {arch}", columns, rows)
    if layers:
        for r in reports:
            print_table(
                f"{arch} / {r.algorithm}: layers",
                ["layer", "type", "binary", "output", "MACs", "BOPs", "FLOPs_fp", "params_bin", "params_fp"],
                [
                    (
                        l.name,
                        l.type,
                        "yes" if l.binary else "",
                        "x".join(map(str, l.output_shape)),
                        l.macs,
                        l.bops,
                        l.flops_fp,
                        l.params_bin,
                        l.params_fp,
                    )
                    for l in r.layers
                ],
            )
