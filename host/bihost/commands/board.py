"""`bihost board`: list, show, register and remove boards in the inventory.

`command` is the click group; other modules add subcommands to it (e.g. `board check`)
with `@command.command("check")` and `@inventory_option`, so every verb resolves the
inventory the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from biagent.runtimes import list_runtimes

from ..inventory import ARCHES, TRANSPORTS, Board, Inventory, InventoryError, default_inventory_path
from ..output import console, print_json, print_table


def inventory_option(f: Callable) -> Callable:
    """`--inventory FILE`, resolved lazily so a missing default fails only in verbs that read it."""
    return click.option(
        "--inventory",
        "inventory_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Inventory file (default: $BIHOST_INVENTORY, ./inventory.yaml, or the shipped one).",
    )(f)


def inventory_file(path: Path | None) -> Path:
    return path if path is not None else default_inventory_path()


def board_json(board: Board) -> dict[str, Any]:
    return {"name": board.name, **board.to_dict()}


@click.group("board")
def command() -> None:
    """The boards of the farm (inventory.yaml): who they are and where their agents answer."""


@command.command("list")
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_boards(inventory_path: Path | None, as_json: bool) -> None:
    """Every board, with its chip and whether its agent is registered."""
    path = inventory_file(inventory_path)
    boards = Inventory.load(path).boards()
    if as_json:
        print_json([board_json(b) for b in boards])
        return
    print_table(
        f"boards: {path}",
        ["name", "soc", "arch", "os", "runtimes", "transport", "address"],
        [(b.name, b.soc, b.arch, b.os, ",".join(b.runtimes), b.transport, b.address or "-") for b in boards],
    )


@command.command("show")
@click.argument("name")
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def show(name: str, inventory_path: Path | None, as_json: bool) -> None:
    """One board's entry."""
    board = Inventory.load(inventory_file(inventory_path)).get(name)
    if as_json:
        print_json(board_json(board))
        return
    table = Table(title=f"board {name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in board_json(board).items():
        if key == "cpu":  # one cluster per line
            key, value = "cpu clusters", "\n".join(value["clusters"])
        table.add_row(key, _text(value))
    console.print(table)


@command.command("add")
@click.argument("name")
@click.option(
    "--address", required=True, help="Where the agent answers: HOST:PORT, [IPv6]:PORT or 'embedded'."
)
@click.option("--soc", default=None, help="Chip label, e.g. 'HiSilicon Kirin 970'.")
@click.option("--arch", type=click.Choice(ARCHES), default=None, help="CPU architecture (new board: native).")
@click.option("--os", "os_name", default=None, help="Operating system, e.g. android, linux.")
@click.option(
    "--runtime", "runtimes", multiple=True, type=click.Choice(list_runtimes()), help="A runtime (repeatable)."
)
@click.option(
    "--cpu", "clusters", multiple=True, help="A CPU cluster, e.g. '4x Cortex-A73 @ 2.36' (repeatable)."
)
@click.option(
    "--transport", type=click.Choice(TRANSPORTS), default=None, help="How the host reaches it (grpc)."
)
@click.option("--description", default=None, help="Free text.")
@click.option(
    "--emulated/--not-emulated",
    default=None,
    help="Its CPU is emulated (qemu-user; `bihost board emulate`): rows marked, kept out of every ratio.",
)
@click.option("--replace", is_flag=True, help="Overwrite a board that already has an address.")
@inventory_option
def add(
    name: str,
    address: str,
    soc: str | None,
    arch: str | None,
    os_name: str | None,
    runtimes: tuple[str, ...],
    clusters: tuple[str, ...],
    transport: str | None,
    description: str | None,
    emulated: bool | None,
    replace: bool,
    inventory_path: Path | None,
) -> None:
    """Register a board's agent. A listed board without an address (the paper's chips) just
    gets one; a board that has an address needs --replace. Options not given are kept."""
    path = inventory_file(inventory_path)
    given: dict[str, Any] = {
        "address": address,
        "soc": soc,
        "arch": arch,
        "os": os_name,
        "transport": transport,
        "description": description,
        "runtimes": list(runtimes) or None,
        "cpu_clusters": list(clusters) or None,
        "emulated": emulated,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    with Inventory.editing(path) as inv:
        if name in inv:
            old = inv.get(name)
            if old.address is not None and not replace:
                raise InventoryError(
                    f"already exists with address {old.address}; pass --replace to change it",
                    board=name,
                    key="name",
                )
            inv.replace(dataclasses.replace(old, **changes))
            verb = "updated"
        else:
            inv.add(Board(name=name, **changes))
            verb = "added"
    click.echo(f"{verb} board {name} ({address}) in {path}")


@command.command("rm")
@click.argument("name")
@inventory_option
def rm(name: str, inventory_path: Path | None) -> None:
    """Remove a board from the inventory."""
    path = inventory_file(inventory_path)
    with Inventory.editing(path) as inv:
        inv.remove(name)
    click.echo(f"removed board {name} from {path}")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return "\n".join(f"{k}: {_text(v)}" for k, v in value.items())
    return str(value)
