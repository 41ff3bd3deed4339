"""`bihost metrics serve`: the Prometheus endpoint that Grafana's dashboards read."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from ..metrics import ServeSecurity, UpProbe, serve_metrics
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
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True),
    help="Serve HTTPS with this certificate (PEM; `bihost certs issue`).",
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False, exists=True), help="The certificate's private key (PEM)."
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True),
    help="Require `Authorization: Bearer <token>` (the file's content) on /metrics.",
)
@click.option(
    "--insecure-serve", is_flag=True, help="Allow plaintext on a non-loopback --host (a network you trust)."
)
def serve(
    port: int,
    host: str,
    results_dir: Path,
    inventory: Path | None,
    insecure: bool,
    tls_cert: str | None,
    tls_key: str | None,
    token_file: str | None,
    insecure_serve: bool,
) -> None:
    """Serve /metrics until SIGINT or SIGTERM."""
    from biagent.security import SecurityConfigError, load_token

    try:
        token = load_token(token_file) if token_file else None
    except SecurityConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    security = ServeSecurity(tls_cert, tls_key, token, insecure_serve)
    security.check(host)  # before reading the inventory or the store: the cheapest refusal first
    run(
        existing_store(results_dir), port, host, up_probe_for(inventory, insecure=insecure), security=security
    )


def up_probe_for(inventory: Path | None, timeout_s: float = 1.0, insecure: bool = False) -> UpProbe | None:
    """Per scrape: every inventory board, health-checked when it has a gRPC address (1 s each).

    The inventory is read at every scrape, so a board added (or removed) later shows without a
    restart. A board that cannot be probed from here maps to None: the embedded `local` board
    (it only exists while a host command runs), SSH boards (their agent answers on the board's
    own loopback, which would need a tunnel per scrape) and boards not registered yet.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..client import AgentClient
    from ..inventory import Inventory, default_inventory_path

    path = Path(inventory or default_inventory_path())
    if inventory is None and not path.exists():  # no inventory: serve results without agent_up
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

    def probe() -> dict[str, bool | None]:
        boards = Inventory.load(path).boards()  # an unreadable inventory costs agent_up this scrape
        found: dict[str, bool | None] = {b.name: None for b in boards}
        probed = [b for b in boards if b.address and b.address != "embedded" and b.transport == "grpc"]
        if probed:
            with ThreadPoolExecutor(max_workers=min(16, len(probed))) as pool:
                found.update(pool.map(check, probed))
        return found

    try:  # a named inventory that does not load is refused at start, with its error
        Inventory.load(path)
    except Exception:
        if inventory is not None:
            raise
        return None  # the default inventory is optional: serve results without agent_up
    return probe


def run(
    store: ResultsStore,
    port: int,
    host: str,
    up_probe: UpProbe | None,
    stop: threading.Event | None = None,
    security: ServeSecurity | None = None,
) -> None:
    """Serve until `stop` is set or a SIGINT/SIGTERM arrives, then close the socket."""
    stop = stop or threading.Event()
    server, thread = serve_metrics(store, port, host=host, up_probe=up_probe, security=security)
    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers only install there
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        shown = f"[{host}]" if ":" in host else host  # IPv6 literals need brackets in a URL
        scheme = "https" if security is not None and security.tls else "http"
        click.echo(f"serving metrics on {scheme}://{shown}:{server.server_port}/metrics")
        while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
