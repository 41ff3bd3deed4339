"""`bihost board bootstrap NAME`: install, start and check the agent on a board over SSH."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..output import print_json, print_table


@click.command("bootstrap")
@click.argument("name")
@click.option(
    "--inventory", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Inventory file."
)
@click.option(
    "--accept-new-host-key",
    is_flag=True,
    help="Record the board's SSH host key if known_hosts does not have it yet (a changed key is never accepted).",
)
@click.option("--agent-dir", default=None, help="Agent directory on the board (default ~/.bibench-agent).")
@click.option(
    "--port",
    type=int,
    default=None,
    help="Agent port on the board's loopback (default: the address's, or 50051).",
)
@click.option(
    "--pip-arg",
    "pip_args",
    multiple=True,
    help="Extra argument for pip on the board, e.g. --pip-arg=--index-url=URL (repeatable).",
)
@click.option("--stop", "stop_agent", is_flag=True, help="Stop the agent and its supervisor instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def command(
    name: str,
    inventory: Path | None,
    accept_new_host_key: bool,
    agent_dir: str | None,
    port: int | None,
    pip_args: tuple[str, ...],
    stop_agent: bool,
    as_json: bool,
) -> None:
    """Over SSH: ship this checkout as a wheel, install it in a venv on the board (agent only, no
    torch), start it supervised with its log, wait for its health check, show what it measures.
    Running it again with the same version and the agent up changes nothing."""
    from ..bootstrap import DEFAULT_DIR, bootstrap, stop
    from ..inventory import Inventory, default_inventory_path
    from ..output import console
    from ..ssh import endpoint_for

    path = Path(inventory or default_inventory_path())
    board = Inventory.load(path).get(name)
    endpoint = endpoint_for(board, path.resolve().parent)
    directory = agent_dir or (board.ssh.agent_dir if board.ssh and board.ssh.agent_dir else DEFAULT_DIR)
    if stop_agent:
        stop(board, endpoint, directory, accept_new_host_key)
        click.echo(f"board {name}: agent stopped")
        return
    report = bootstrap(
        board,
        endpoint,
        agent_dir=directory,
        port=port,
        accept_new_host_key=accept_new_host_key,
        pip_args=pip_args,
        progress=lambda msg: (
            console.print(f"[{name}] {msg}", highlight=False, markup=False) if not as_json else None
        ),
    )
    ident = report.identity
    data: dict[str, Any] = {
        "board": name,
        "version": report.version,
        "changed": report.changed,
        "agent_dir": report.agent_dir,
        "port": report.port,
        "agent": {
            "name": ident.name,
            "version": ident.version,
            "hostname": ident.hostname,
            "cpu_model": ident.cpu_model,
            "machine": ident.machine,
            "cores": ident.cores,
            "os": ident.os,
        },
        "runtimes": {n: r["installed"] for n, r in ident.runtimes.items()},
    }
    if as_json:
        print_json(data)
        return
    print_table(
        f"board {name}: agent {report.version} {'installed and started' if report.changed else 'unchanged'}",
        ["field", "value"],
        [
            ("agent dir", report.agent_dir),
            ("port (board loopback)", str(report.port)),
            ("cpu", ident.cpu_model),
            ("machine", ident.machine),
            ("cores", str(ident.cores)),
            ("os", ident.os),
            ("runtimes", ", ".join(n for n, ok in data["runtimes"].items() if ok) or "none"),
        ],
    )
