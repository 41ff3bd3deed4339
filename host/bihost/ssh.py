"""SSH to a board (paramiko): verified host keys, quoted commands, and port forwards.

Host keys are checked against known_hosts (the board's `ssh.known_hosts_file`, else
~/.ssh/known_hosts). An unknown key is refused with its fingerprint and the flag that
accepts it (`--accept-new-host-key`, which then records it); a changed key is always
refused, with the command that removes the stale line. ~/.ssh/config is honoured for
HostName, Port, User, IdentityFile and UserKnownHostsFile where the inventory is silent.
Only keys and an ssh-agent authenticate: no password is ever asked for, stored or logged.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import select
import shlex
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import paramiko

from .errors import BoardError
from .inventory import parse_address

# paramiko logs refused forwards (an agent still starting) at ERROR; the caller reports what
# matters, so keep its logger from printing through logging's last-resort handler.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class SshEndpoint:
    """Where and how to log in, after the inventory and ~/.ssh/config are merged."""

    board: str
    host: str
    port: int
    user: str | None
    key_files: tuple[str, ...]
    known_hosts: Path

    @property
    def label(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:  # how OpenSSH names a host with a non-default port
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def fingerprint(key: paramiko.PKey) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def endpoint_for(board, inventory_dir: Path | None = None, ssh_config: Path | None = None) -> SshEndpoint:
    """The board's SSH endpoint: inventory `ssh` settings first, then ~/.ssh/config, then defaults."""
    settings = board.ssh
    host = (settings.host if settings and settings.host else None) or _address_host(board)
    if not host:
        raise BoardError(board.name, "no SSH host: give the board `ssh: {host: ...}` or an address")
    config = paramiko.SSHConfig()
    cfg_path = ssh_config or Path("~/.ssh/config").expanduser()
    if cfg_path.exists():
        config = paramiko.SSHConfig.from_path(str(cfg_path))
    found = config.lookup(host)
    base = inventory_dir or Path.cwd()

    def rel(p: str) -> str:
        return str((base / Path(p).expanduser()).resolve())

    port = settings.port if settings and settings.port != 22 else int(found.get("port", 22))
    user = (settings.user if settings and settings.user else None) or found.get("user")
    keys = (
        (rel(settings.key_file),)
        if settings and settings.key_file
        else tuple(str(Path(k).expanduser()) for k in found.get("identityfile", []))
    )
    known = (
        Path(rel(settings.known_hosts_file))
        if settings and settings.known_hosts_file
        else Path((found.get("userknownhostsfile") or "~/.ssh/known_hosts").split()[0]).expanduser()
    )
    return SshEndpoint(board.name, found.get("hostname", host), port, user, keys, known)


def _address_host(board) -> str | None:
    if not board.address or board.address == "embedded":
        return None
    return parse_address(board.address, board=board.name)[0]


class _Verify(paramiko.MissingHostKeyPolicy):
    """Unknown key: refuse with its fingerprint, or (when accepting) record it in known_hosts."""

    def __init__(self, endpoint: SshEndpoint, accept_new: bool):
        self.endpoint, self.accept_new = endpoint, accept_new

    def missing_host_key(self, client, hostname, key) -> None:
        ep = self.endpoint
        if not self.accept_new:
            raise BoardError(
                ep.board,
                f"SSH host key of {ep.known_hosts_name} ({key.get_name()} {fingerprint(key)}) "
                f"is not in {ep.known_hosts}: check the fingerprint on the board "
                "(ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then rerun with "
                "--accept-new-host-key to record it",
            )
        ep.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(ep.known_hosts, "a", encoding="utf-8") as f:
            f.write(f"{ep.known_hosts_name} {key.get_name()} {key.get_base64()}\n")


def connect(
    endpoint: SshEndpoint, accept_new_host_key: bool = False, timeout_s: float = 15.0
) -> paramiko.SSHClient:
    """A logged-in SSHClient, or a BoardError saying what to fix (never a password prompt)."""
    client = paramiko.SSHClient()
    if endpoint.known_hosts.exists():
        client.load_host_keys(str(endpoint.known_hosts))
    client.set_missing_host_key_policy(_Verify(endpoint, accept_new_host_key))
    try:
        client.connect(
            endpoint.host,
            endpoint.port,
            username=endpoint.user,
            key_filename=list(endpoint.key_files) or None,
            timeout=timeout_s,
            banner_timeout=timeout_s,
            auth_timeout=timeout_s,
            allow_agent=True,
            look_for_keys=not endpoint.key_files,
            password=None,
        )
    except BoardError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise BoardError(
            endpoint.board,
            f"SSH HOST KEY CHANGED for {endpoint.known_hosts_name}: known_hosts has "
            f"{fingerprint(exc.expected_key)}, the board offers {fingerprint(exc.key)}. "
            "If the board was reinstalled, remove the old line: ssh-keygen -R "
            f"'{endpoint.known_hosts_name}' -f {endpoint.known_hosts}",
        ) from None
    except paramiko.AuthenticationException:
        client.close()
        keys = ", ".join(endpoint.key_files) or "ssh-agent and ~/.ssh/id_*"
        raise BoardError(
            endpoint.board,
            f"SSH login to {endpoint.label} was refused for the keys tried ({keys}): "
            "add the public key to the board's authorized_keys",
        ) from None
    except (OSError, paramiko.SSHException) as exc:
        client.close()
        raise BoardError(
            endpoint.board, f"cannot reach {endpoint.label} over SSH: {exc}", transient=True
        ) from None
    return client


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def run(
    client: paramiko.SSHClient, argv: list[str], timeout_s: float = 600.0, check: bool = True, board: str = ""
) -> Result:
    """Run `argv` on the board; every word is shell-quoted, so no argument is ever interpreted."""
    command = " ".join(shlex.quote(a) for a in argv)
    return run_shell(client, command, timeout_s, check, board)


def run_shell(
    client: paramiko.SSHClient, command: str, timeout_s: float = 600.0, check: bool = True, board: str = ""
) -> Result:
    """Run a shell command line built only from quoted parts (see `run`) and constant text."""
    _, out, err = client.exec_command(command, timeout=timeout_s)
    stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    code = out.channel.recv_exit_status()
    if check and code != 0:
        lines = (stderr.strip() or stdout.strip()).splitlines()
        # the lines that say what went wrong (pip's "ERROR: No matching distribution found for
        # X") over the last ones, which can be a resolver's list of versions it skipped
        errors = [ln for ln in lines if ln.lstrip().lower().startswith(("error", "fatal"))]
        tail = (errors or lines)[-3:]
        raise BoardError(
            board, f"`{command[:200]}` failed on the board (exit {code}): {' | '.join(tail)[-600:]}"
        )
    return Result(code, stdout, stderr)


class Tunnel:
    """127.0.0.1:local_port on this machine, forwarded over SSH to remote_host:remote_port as the board sees it."""

    def __init__(self, client: paramiko.SSHClient, remote_host: str, remote_port: int):
        self.client, self.remote = client, (remote_host, remote_port)
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.local_port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name=f"tunnel-{remote_port}")
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.local_port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([self._server], [], [], 0.2)
                if not readable:
                    continue
                conn, peer = self._server.accept()
            except OSError:
                return
            try:
                channel = self.client.get_transport().open_channel("direct-tcpip", self.remote, peer)
            except Exception:  # the board refused or the SSH link is gone: the gRPC client sees a reset
                conn.close()
                continue
            threading.Thread(target=_pump, args=(conn, channel, self._stop), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        self._thread.join(timeout=2)

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pump(sock: socket.socket, channel: paramiko.Channel, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            readable, _, _ = select.select([sock, channel], [], [], 0.2)
            if sock in readable:
                data = sock.recv(65536)
                if not data:
                    break
                channel.sendall(data)
            if channel in readable:
                data = channel.recv(65536)
                if not data:
                    break
                sock.sendall(data)
    except OSError:
        pass
    finally:
        channel.close()
        sock.close()


def remote_home(client: paramiko.SSHClient, board: str) -> str:
    return run(client, ["sh", "-c", 'printf %s "$HOME"'], board=board).stdout.strip() or "/tmp"


def expand_remote(path: str, home: str) -> str:
    return home + path[1:] if path == "~" or path.startswith("~/") else path


# The board computes the hash of what arrived with the Python the agent needs anyway.
_SHA256 = "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())"


def put_file(client: paramiko.SSHClient, data: bytes, remote: str, board: str = "", mode: int = 0o644) -> str:
    """Write `data` to `remote` on the board; returns how ("sftp" or "exec").

    SFTP when the board's sshd offers it; boards without the subsystem (dropbear, some
    embedded images) get the bytes over an exec channel (`cat` into a temp file), checked
    against their sha256 on the board and renamed into place. Failures are BoardErrors.
    """
    try:
        sftp = client.open_sftp()
    except (paramiko.SSHException, EOFError):  # "Channel closed": no sftp subsystem there
        sftp = None
    if sftp is not None:
        try:
            with sftp:
                with sftp.open(remote, "wb") as f:
                    f.write(data)
                sftp.chmod(remote, mode)
            return "sftp"
        except (OSError, paramiko.SSHException) as exc:
            raise BoardError(board, f"cannot write {remote} on the board by SFTP: {exc}") from None
    q = shlex.quote
    part = f"{remote}.part"
    try:
        channel = client.get_transport().open_session()
        channel.settimeout(600)
        channel.exec_command(f"cat > {q(part)}")
        channel.sendall(data)
        channel.shutdown_write()
        code = channel.recv_exit_status()
        errors = channel.makefile_stderr("rb").read().decode("utf-8", "replace").strip()
        channel.close()
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise BoardError(
            board, f"the board offers no SFTP, and copying {remote} over an exec channel failed: {exc}"
        ) from None
    if code != 0:
        raise BoardError(
            board, f"the board offers no SFTP, and `cat > {part}` failed (exit {code}): {errors[:300]}"
        )
    digest = run(client, ["python3", "-c", _SHA256, part], board=board).stdout.strip()
    if digest != hashlib.sha256(data).hexdigest():
        run(client, ["rm", "-f", part], check=False, board=board)
        raise BoardError(
            board,
            f"{remote} arrived corrupted over the exec channel (sha256 {digest[:16]}...); "
            "nothing was installed",
        )
    run(client, ["chmod", f"{mode:o}", part], board=board)
    run(client, ["mv", "-f", part, remote], board=board)
    return "exec"
