"""`bihost board check NAME`: is the agent up, and is it the board the inventory says?"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import BoardError
from ..output import print_json, print_table


@click.command("check")
@click.argument("name")
@click.option(
    "--inventory", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Inventory file."
)
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the agent.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--insecure", is_flag=True, help="Allow plaintext gRPC to a non-loopback address.")
def command(name: str, inventory: Path | None, timeout: float, as_json: bool, insecure: bool) -> None:
    """Health check plus the identity the agent measures, compared with the inventory entry."""
    from ..client import AgentClient
    from ..inventory import Inventory, default_inventory_path, identity_mismatch
    from ..targets import resolve_targets

    board = Inventory.load(inventory or default_inventory_path()).get(name)
    with resolve_targets(name, False, inventory, insecure=insecure) as targets:
        target = targets[0]
        with AgentClient(target.address, name, timeout_s=timeout, security=target.security) as client:
            healthy = client.health(timeout_s=timeout)
            if not healthy:
                raise BoardError(name, f"agent at {target.address} is not serving (health check failed)")
            ident = client.identity()
    mismatch = identity_mismatch(board, ident.reported())
    data = {
        "board": name,
        "address": board.address,
        "healthy": healthy,
        "identity_ok": mismatch is None,
        "mismatch": mismatch or "",
        "agent": {
            "name": ident.name,
            "version": ident.version,
            "hostname": ident.hostname,
            "cpu_model": ident.cpu_model,
            "machine": ident.machine,
            "cores": ident.cores,
            "core_types": list(ident.core_types),
            "os": ident.os,
            "memory_bytes": ident.memory_bytes,
            "governor": ident.governor,
            "temperature_c": ident.temperature_c,
        },
        "runtimes": ident.runtimes,
        # declared in the inventory, and whether the agent's identity shows an emulated CPU
        "emulated": board.emulated,
        "looks_emulated": ident.looks_emulated(),
    }
    if as_json:
        print_json(data)
    else:
        print_table(
            f"board {name} ({board.address})",
            ["field", "value"],
            [
                ("health", "SERVING"),
                ("identity", "matches inventory" if mismatch is None else f"MISMATCH: {mismatch}"),
                ("cpu", ident.cpu_model),
                ("machine", ident.machine),
                *(
                    [("emulated", "yes: its rows are rehearsal, never compared with real boards")]
                    if board.emulated or data["looks_emulated"]
                    else []
                ),
                ("cores", str(ident.cores)),
                ("os", ident.os),
                ("governor", ident.governor or "(not visible)"),
                (
                    "temperature",
                    f"{ident.temperature_c:.1f} C" if ident.temperature_c is not None else "(not visible)",
                ),
                *[
                    (
                        f"runtime {n}",
                        f"{r['version']} {r['detail']}"
                        if r["installed"]
                        else r["detail"]
                        if r["detail"].startswith("not installed")
                        else f"not installed: {r['detail']}",
                    )
                    for n, r in ident.runtimes.items()
                ],
            ],
        )
    if mismatch is not None:
        raise BoardError(name, f"identity mismatch: {mismatch}")
