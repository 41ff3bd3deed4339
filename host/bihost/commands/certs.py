"""`bihost certs init|issue`: the lab CA and the certificates of agents and hosts."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_DIR = Path("~/.config/bibench-farm/certs")

dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=str(DEFAULT_DIR),
    show_default=True,
    help="Where the CA and certificates live.",
)


@click.group("certs")
def command() -> None:
    """TLS certificates for agents (server) and hosts (client, for mutual TLS)."""


@command.command("init")
@dir_option
@click.option("--days", default=3650, show_default=True, help="Validity of the CA.")
@click.option("--force", is_flag=True, help="Replace an existing CA (its certificates stop being trusted).")
def init(directory: Path, days: int, force: bool) -> None:
    """Create the lab CA (ca.pem, and ca.key readable only by you)."""
    from ..certs import init_ca

    files = init_ca(directory.expanduser(), days=days, force=force)
    click.echo(f"CA written: {files.cert} (share with hosts and boards), {files.key} (keep private)")


@command.command("issue")
@click.argument("name")
@dir_option
@click.option("--host", "hosts", multiple=True, help="An address the host dials (IP or DNS name); repeat.")
@click.option(
    "--client", is_flag=True, help="A host's client certificate (mutual TLS) instead of an agent's."
)
@click.option("--days", default=825, show_default=True)
@click.option("--force", is_flag=True, help="Replace existing files.")
def issue_cmd(
    name: str, directory: Path, hosts: tuple[str, ...], client: bool, days: int, force: bool
) -> None:
    """Sign NAME.pem / NAME.key with the lab CA."""
    from ..certs import issue

    files = issue(directory.expanduser(), name, list(hosts), client=client, days=days, force=force)
    use = (
        f"inventory: tls: {{ca: ca.pem, cert: {files.cert}, key: {files.key}}}"
        if client
        else f"agent: biagent serve --tls-cert {files.cert.name} --tls-key {files.key.name}"
    )
    click.echo(f"issued {files.cert} and {files.key}\n  {use}")
