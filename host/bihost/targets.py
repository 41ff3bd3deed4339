"""From board names to reachable agents: the inventory, plus the embedded local agent."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import overload

from .channel import ChannelSecurity
from .client import AgentClient
from .errors import BoardError, UserError
from .local_agent import LocalAgent
from .profile import Target


def security_for(board, inventory_dir: Path, insecure: bool = False) -> ChannelSecurity:
    """The channel settings of a board: its `tls` files and token (paths relative to the inventory)."""

    @overload
    def path(p: str) -> str: ...
    @overload
    def path(p: None) -> None: ...
    def path(p: str | None) -> str | None:
        return None if p is None else str((inventory_dir / Path(p).expanduser()).resolve())

    token = None
    if board.token_file:
        try:
            token = Path(path(board.token_file)).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BoardError(
                board.name, f"cannot read token_file {board.token_file}: {exc.strerror or exc}"
            ) from None
        if not token:
            raise BoardError(board.name, f"token_file {board.token_file} is empty")
    tls = board.tls
    return ChannelSecurity(
        ca_file=path(tls.ca) if tls else None,
        cert_file=path(tls.cert) if tls else None,
        key_file=path(tls.key) if tls else None,
        server_name=tls.server_name if tls else None,
        token=token,
        insecure=insecure,
    )


@contextmanager
def resolve_targets(
    chips: str | None, all_up: bool, inventory_path: Path | None, insecure: bool = False
) -> Iterator[list[Target]]:
    """Targets for `--chip a,b` or `--all-up`; starts (and stops) the embedded agent if needed."""
    from .inventory import Inventory, default_inventory_path, identity_mismatch

    path = Path(inventory_path or default_inventory_path())
    inv = Inventory.load(path)
    if all_up:
        boards = [b for b in inv.boards() if b.address]
    else:
        boards = [inv.get(name.strip()) for name in (chips or "").split(",") if name.strip()]
    for b in boards:
        if not b.address:
            raise UserError(
                f"board {b.name} has no agent address yet: bihost board add {b.name} --address HOST:PORT"
            )
    local: LocalAgent | None = None
    tunnels = ExitStack()
    try:
        targets = []
        for b in boards:
            address = b.address
            assert address is not None  # boards without an address raised above
            if address == "embedded":
                local = local or LocalAgent(name=b.name).start()
                address = local.address
            elif b.transport == "ssh":  # the agent answers on the board; we reach it through a forward
                address = tunnels.enter_context(_ssh_forward(b, path.resolve().parent)).address
            targets.append(
                Target(
                    b.name,
                    b.soc,
                    address,
                    partial(identity_mismatch, b),
                    security=security_for(b, path.resolve().parent, insecure),
                    emulated=b.emulated,
                )
            )
        if all_up:
            targets = [t for t in targets if _up(t)]
            if not targets:
                raise UserError("no board with an address answered its health check")
        yield targets
    finally:
        tunnels.close()
        if local is not None:
            local.stop()


@contextmanager
def _ssh_forward(board, inventory_dir: Path):
    from .inventory import parse_address
    from .ssh import Tunnel, connect, endpoint_for

    client = connect(endpoint_for(board, inventory_dir))
    host, port = parse_address(board.address, board=board.name)
    try:
        with Tunnel(client, host, port) as tunnel:
            yield tunnel
    finally:
        client.close()


def _up(target: Target) -> bool:
    try:
        with AgentClient(target.address, target.name, timeout_s=3, security=target.security) as client:
            return client.health(timeout_s=3)
    except BoardError:  # e.g. plaintext refused: not usable, so not up
        return False
