"""`bihost models`: what the registries hold."""

from __future__ import annotations

import click

from ..output import print_json, print_table


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def command(as_json: bool) -> None:
    """List the binarization algorithms, architectures and export formats."""
    import bimodels
    from bimodels.algorithms import get_algorithm

    data = {
        "algorithms": bimodels.list_algorithms(),
        "architectures": bimodels.list_architectures(),
        "formats": bimodels.list_formats(),
    }
    if as_json:
        print_json(data)
        return
    print_table("algorithms", ["name", "paper"], [(n, get_algorithm(n).paper) for n in data["algorithms"]])
    infos = [bimodels.get_arch_info(n) for n in data["architectures"]]
    print_table(
        "architectures",
        ["name", "family", "task", "input", "classes"],
        [(i.name, i.family, i.task, "x".join(map(str, i.input_shape)), i.num_classes) for i in infos],
    )
