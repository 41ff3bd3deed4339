"""Shared fixtures: deterministic seeds and trained-looking models."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class AgentProcess:
    """A real `biagent serve` process on 127.0.0.1, on a port the agent picked itself."""

    def __init__(
        self, store: Path, name: str = "test-board", extra: tuple[str, ...] = (), prefix: tuple[str, ...] = ()
    ):
        self.store, self.name = store, name
        self.proc = subprocess.Popen(  # prefix: e.g. `ip netns exec NS` to run it in another network
            [
                *prefix,
                sys.executable,
                "-m",
                "biagent.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--store",
                str(store),
                "--name",
                name,
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.output: list[str] = []
        self.address = ""
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:
                self.output.append(line)
                m = re.search(r"listening on (\S+:\d+)", line)
                if m:
                    self.address = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60) or not self.address:
            self.stop()
            raise RuntimeError("agent did not start: " + "".join(self.output))

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def start_agent(tmp_path):
    """Factory: start_agent(name=...) -> AgentProcess; every agent is stopped afterwards."""
    agents: list[AgentProcess] = []

    def start(
        name: str = "test-board", store: Path | None = None, extra: tuple[str, ...] = ()
    ) -> AgentProcess:
        agent = AgentProcess(store or tmp_path / f"store-{name}-{len(agents)}", name, extra)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        if agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGCONT)  # a test may have stopped it
        agent.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SshServer:
    """A real OpenSSH server on 127.0.0.1 at a free port, with its own config, host key and
    authorized key (a test's "board"). Needs /usr/sbin/sshd (`.ci/run` installs openssh-server)."""

    SSHD = "/usr/sbin/sshd"

    def __init__(self, root: Path, sftp: bool = True):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        for name in ("host_key", "client_key", "stranger_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True
            )
        (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
        self.config = root / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
            "StrictModes no\nUsePAM no\nAllowTcpForwarding yes\nLogLevel ERROR\n"
            + ("Subsystem sftp internal-sftp\n" if sftp else "")
        )  # without: like dropbear and embedded images
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.SSHD, "-D", "-e", "-f", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    out = self.proc.stdout.read() if self.proc.poll() is not None else ""
                    self.stop()
                    raise RuntimeError(f"sshd did not start: {out}") from None
                time.sleep(0.1)
        self.key = root / "client_key"
        self.known_hosts_line = (
            f"[127.0.0.1]:{self.port} {(root / 'host_key.pub').read_text().split()[0]} "
            f"{(root / 'host_key.pub').read_text().split()[1]}\n"
        )
        self.user = os.environ.get("USER") or __import__("getpass").getuser()

    def ssh_settings(self, known_hosts: Path, **extra) -> dict:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "key_file": str(self.key),
            "known_hosts_file": str(known_hosts),
            **extra,
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _need_sshd() -> None:
    if not Path(SshServer.SSHD).exists() or not shutil.which("ssh-keygen"):
        if os.environ.get("CI"):
            pytest.fail("CI must run the SSH tests: .ci/run installs openssh-server")
        pytest.skip("no OpenSSH server here (apt-get install openssh-server)")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    _need_sshd()
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def sshd_without_sftp(tmp_path_factory):
    """A board whose sshd has no SFTP subsystem (dropbear, some embedded images)."""
    _need_sshd()
    server = SshServer(tmp_path_factory.mktemp("sshd-nosftp"), sftp=False)
    yield server
    server.stop()


class NetnsLink:
    """A network namespace joined to this one by a veth pair (10.213.N.1 here, .2 there): a
    "board" whose link a test can take down, unlike loopback. Needs root and iproute2."""

    def __init__(self):
        n = os.getpid() % 200 + 20
        pid = os.getpid() % 100000
        self.name, self.host_if, self.ns_if = f"bb{pid}", f"bbh{pid}", f"bbn{pid}"
        self.host_ip, self.board_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self.prefix = ("ip", "netns", "exec", self.name)
        try:
            self._create()
        except (subprocess.SubprocessError, OSError):
            self.remove()  # whatever was made before the step that failed
            raise

    def _create(self) -> None:
        for cmd in (
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if],
            ["ip", "link", "set", self.ns_if, "netns", self.name],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            [*self.prefix, "ip", "addr", "add", f"{self.board_ip}/30", "dev", self.ns_if],
            [*self.prefix, "ip", "link", "set", self.ns_if, "up"],
            [*self.prefix, "ip", "link", "set", "lo", "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True, timeout=20)

    def link(self, up: bool) -> None:
        subprocess.run(["ip", "link", "set", self.host_if, "up" if up else "down"], check=True, timeout=20)

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)


@pytest.fixture
def netns_link():
    if not shutil.which("ip"):
        pytest.skip("no iproute2 here")
    try:
        link = NetnsLink()
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"network namespaces are not available here: {getattr(exc, 'stderr', b'') or exc}")
    yield link
    link.remove()
