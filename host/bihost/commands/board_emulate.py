"""`bihost board emulate NAME`: run an inventory's emulated AArch64 board on this machine."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import threading
from pathlib import Path

import click

from ..errors import UserError
from .board import inventory_file, inventory_option

DEFAULT_SSH_PORT = 2222
DEFAULT_AGENT_ADDRESS = "127.0.0.1:50051"  # the agent as the board sees it (reached through SSH)


@click.command("emulate")
@click.argument("name")
@inventory_option
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The board's own state: host key, client key, what bootstrap installs (default: under the cache).",
)
@click.option(
    "--ssh-port",
    type=int,
    default=DEFAULT_SSH_PORT,
    show_default=True,
    help="Loopback port of its sshd, when the inventory entry has no ssh settings yet.",
)
def command(name: str, inventory_path: Path | None, directory: Path | None, ssh_port: int) -> None:
    """Run the emulated board NAME (`emulated: true`, `arch: arm64` in the inventory) until
    Ctrl-C: a Debian arm64 root file system under qemu-user with its own sshd on 127.0.0.1,
    built once and cached. An entry without ssh settings gets them (root, a key made here,
    the agent at 127.0.0.1:50051 through SSH). Then, as with a real board:
    `bihost board bootstrap NAME --accept-new-host-key`, `board check`, `profile`. Its rows
    are filed as emulated and never feed a ratio, a score, a figure or a dashboard. Needs root,
    debootstrap and qemu-user-static."""
    from ..emulated import EmulatedBoard, build_rootfs, cache_dir, require_host
    from ..inventory import Inventory, SshSettings
    from ..output import console
    from ..ssh import endpoint_for

    path = inventory_file(inventory_path)
    board = Inventory.load(path).get(name)
    if not board.emulated or board.arch != "arm64":
        raise UserError(
            f"board {name} is not an emulated AArch64 board: its inventory entry needs `emulated: true` "
            "and `arch: arm64` (bihost board emulate runs AArch64 under qemu-user)"
        )
    require_host()
    state = directory or cache_dir().parent / "boards" / name
    state.mkdir(parents=True, exist_ok=True)
    if board.ssh is None:
        key = state / "client_key"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        with Inventory.editing(path) as inv:
            board = dataclasses.replace(
                inv.get(name),
                transport="ssh",
                address=board.address or DEFAULT_AGENT_ADDRESS,
                ssh=SshSettings(host="127.0.0.1", port=ssh_port, user="root", key_file=str(key)),
            )
            inv.replace(board)
        console.print(f"[{name}] ssh settings written to {path}: root@127.0.0.1:{ssh_port}, key {key}")
    ssh = board.ssh
    assert ssh is not None
    if ssh.host not in (None, "127.0.0.1", "localhost") or not ssh.key_file:
        raise UserError(
            f"board {name}: an emulated board listens on 127.0.0.1 and logs in with ssh.key_file "
            f"(its .pub is the authorized key); the entry has host {ssh.host!r}, key_file {ssh.key_file!r}"
        )
    key_file = endpoint_for(board, path.resolve().parent).key_files[0]  # as bootstrap resolves it
    public = Path(key_file + ".pub")
    if not public.exists():
        raise UserError(f"board {name}: {public} (the public half of ssh.key_file) is missing")
    rootfs = build_rootfs(
        progress=lambda msg: console.print(f"[{name}] {msg}", highlight=False, markup=False)
    )
    emu = EmulatedBoard(state, ssh.port, public.read_text(), rootfs)
    emu.start()
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    console.print(
        f"[{name}] emulated AArch64 board up: sshd on 127.0.0.1:{ssh.port} (state: {state}). Next: "
        f"bihost board bootstrap {name} --accept-new-host-key. Ctrl-C stops it and everything it runs.",
        highlight=False,
        markup=False,
    )
    try:
        while not stopped.wait(1.0):
            if emu.proc is None or emu.proc.poll() is not None:
                raise UserError(f"board {name}: the emulated board's sshd exited; see {state / 'sshd.log'}")
    finally:
        emu.stop()
        console.print(f"[{name}] emulated board stopped")
