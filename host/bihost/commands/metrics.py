"""`bihost metrics serve`: the Prometheus endpoint that Grafana's dashboards read."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from ..metrics import UpProbe, serve_metrics
from ..results import ResultsStore
from .results import existing_store, results_dir_option


@click.group("metrics")
def command() -> None:
    """Prometheus exposition of the results store."""


@command.command("serve")
@click.option("--port", type=int, default=9464, show_default=True, help="TCP port (0 picks a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@results_dir_option
@click.option(
    "--inventory",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Inventory whose boards get a bibench_agent_up probe (when board health is available).",
)
@click.option("--insecure", is_flag=True, help="Probe non-loopback boards without TLS in plaintext.")
def serve(port: int, host: str, results_dir: Path, inventory: Path | None, insecure: bool) -> None:
    """Serve /metrics until SIGINT or SIGTERM."""
    run(existing_store(results_dir), port, host, up_probe_for(inventory, insecure=insecure))


def up_probe_for(inventory: Path | None, timeout_s: float = 1.0, insecure: bool = False) -> UpProbe | None:
    """Health-check every board with a network address at scrape time (gRPC health, 1 s each).

    The embedded `local` board only exists while a host command runs, so it is not probed.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..client import AgentClient
    from ..inventory import Inventory, default_inventory_path

    path = Path(inventory or default_inventory_path())
    try:
        # ssh boards answer on their own loopback: probing them would need a tunnel per scrape
        boards = [
            b
            for b in Inventory.load(path).boards()
            if b.address and b.address != "embedded" and b.transport == "grpc"
        ]
    except Exception:  # no inventory: serve results without agent_up
        if inventory is not None:
            raise
        return None

    def check(board) -> tuple[str, bool]:
        from ..errors import BoardError
        from ..targets import security_for

        try:  # a board we may not talk to (plaintext refused, unreadable TLS files) is not up
            with AgentClient(
                board.address,
                board.name,
                timeout_s=timeout_s,
                security=security_for(board, path.resolve().parent, insecure),
            ) as client:
                return board.name, client.health(timeout_s=timeout_s)
        except BoardError:
            return board.name, False

    def probe() -> dict[str, bool]:
        if not boards:
            return {}
        with ThreadPoolExecutor(max_workers=min(16, len(boards))) as pool:
            return dict(pool.map(check, boards))

    return probe


def run(
    store: ResultsStore, port: int, host: str, up_probe: UpProbe | None, stop: threading.Event | None = None
) -> None:
    """Serve until `stop` is set or a SIGINT/SIGTERM arrives, then close the socket."""
    stop = stop or threading.Event()
    server, thread = serve_metrics(store, port, host=host, up_probe=up_probe)
    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers only install there
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        shown = f"[{host}]" if ":" in host else host  # IPv6 literals need brackets in a URL
        click.echo(f"serving metrics on http://{shown}:{server.server_port}/metrics")
        while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
