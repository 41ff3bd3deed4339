"""From board names to reachable agents: the inventory, plus the embedded local agent."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .client import AgentClient
from .errors import UserError
from .local_agent import LocalAgent
from .profile import Target


@contextmanager
def resolve_targets(chips: str | None, all_up: bool, inventory_path: Path | None) -> Iterator[list[Target]]:
    """Targets for `--chip a,b` or `--all-up`; starts (and stops) the embedded agent if needed."""
    from .inventory import Inventory, default_inventory_path, identity_mismatch

    inv = Inventory.load(inventory_path or default_inventory_path())
    if all_up:
        boards = [b for b in inv.boards() if b.address]
    else:
        boards = [inv.get(name.strip()) for name in (chips or "").split(",") if name.strip()]
    for b in boards:
        if not b.address:
            raise UserError(f"board {b.name} has no agent address yet: bihost board add {b.name} --address HOST:PORT")
    local: LocalAgent | None = None
    try:
        targets = []
        for b in boards:
            address = b.address
            if address == "embedded":
                local = local or LocalAgent(name=b.name).start()
                address = local.address
            targets.append(Target(b.name, b.soc, address, lambda reported, b=b: identity_mismatch(b, reported)))
        if all_up:
            targets = [t for t in targets if _up(t)]
            if not targets:
                raise UserError("no board with an address answered its health check")
        yield targets
    finally:
        if local is not None:
            local.stop()


def _up(target: Target) -> bool:
    with AgentClient(target.address, target.name, timeout_s=3) as client:
        return client.health(timeout_s=3)
