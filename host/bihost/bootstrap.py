"""`bihost board bootstrap`: install and start the agent on a board over SSH.

Steps, each idempotent: probe the board (machine, Python), build this repo into a wheel
(same machine type and Python as the host) or an sdist (anything else; the board compiles
the kernels), copy it (by SFTP, or over an exec channel where the board's sshd has no
SFTP subsystem, checked by sha256), install it into a venv on the board with only the agent's
light dependencies (no torch, no host extras) plus the pip-installable runtimes the
inventory lists for the board (onnxruntime, larq), start it under a small supervisor that
restarts it when it exits and appends to its log, wait for its health check through an
SSH port forward, and report the identity it measures. A second bootstrap of the same
version with the agent running changes nothing.

On the board, under the agent directory (default ~/.bibench-agent):
  dist/          the wheel or sdist        venv/       the agent's virtualenv
  store/         the model store           agent.log   the agent's log
  supervisor.sh  restarts the agent        run.enabled remove it (or `--stop`) to stop
  installed      the version installed     *.pid       supervisor and agent pids
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko

from . import __version__
from .client import AgentClient, AgentIdentity
from .errors import BoardError, UserError
from .inventory import parse_address
from .ssh import SshEndpoint, Tunnel, connect, expand_remote, put_file, remote_home, run, run_shell

DEFAULT_DIR = "~/.bibench-agent"
DEFAULT_PORT = 50051
IDENTITY_TIMEOUT_S = 90.0
# Runtimes a board lists in the inventory -> the package extra that installs them there.
# custom ships with the agent; dabnn is a native build the board provides (BIAGENT_DABNN_ROOT).
RUNTIME_EXTRAS = {"onnxruntime": "ort", "larq": "larq"}

SUPERVISOR = """#!/bin/sh
# BiBench Farm agent supervisor, written by `bihost board bootstrap`: restarts the agent when
# it exits, until run.enabled is removed. The agent's output goes to agent.log.
cd "$(dirname "$0")" || exit 1
echo $$ > supervisor.pid
while [ -e run.enabled ]; do
  venv/bin/biagent serve --host 127.0.0.1 --port {port} --store store --name {name} --import-runtimes >> agent.log 2>&1 &
  echo $! > agent.pid
  wait $!
  [ -e run.enabled ] && sleep 2
done
rm -f supervisor.pid agent.pid
"""


@dataclass(frozen=True)
class BootstrapReport:
    board: str
    version: str
    changed: bool
    agent_dir: str
    port: int
    identity: AgentIdentity


def repo_root() -> Path:
    """The source checkout this host runs from (bootstrap ships it); a UserError elsewhere."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists() or not (root / "agent" / "biagent").is_dir():
        raise UserError(
            "board bootstrap ships the agent from a source checkout of bibench-farm "
            "(git clone, then pip install -e '.[host]')"
        )
    return root


def version_id(root: Path) -> str:
    """The package version plus the commit (and `.dirty` for local changes): what "same version" means."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"


def build_package(root: Path, out: Path, wheel: bool) -> Path:
    """A wheel of the repo (built here, for a board like this host) or an sdist (built there)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = (
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(root),
        ]
        if wheel
        else [sys.executable, "setup.py", "-q", "sdist", "-d", str(out)]
    )
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    found = sorted(out.glob("*.whl" if wheel else "*.tar.gz"))
    if proc.returncode or not found:
        raise UserError(f"building the agent package failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return found[-1]


def bootstrap(
    board,
    endpoint: SshEndpoint,
    *,
    agent_dir: str = DEFAULT_DIR,
    port: int | None = None,
    accept_new_host_key: bool = False,
    pip_args: tuple[str, ...] = (),
    progress: Callable[[str], None] = lambda msg: None,
    health_timeout_s: float = 60.0,
) -> BootstrapReport:
    name = board.name
    port = port or (
        parse_address(board.address, board=name)[1]
        if board.address and board.address != "embedded"
        else DEFAULT_PORT
    )
    root = repo_root()
    version = version_id(root)
    client = connect(endpoint, accept_new_host_key)
    try:
        home = remote_home(client, name)
        base = expand_remote(agent_dir, home)
        q = shlex.quote
        progress(f"connected to {endpoint.label}; agent directory {base}")
        probe = run(
            client,
            [
                "python3",
                "-c",
                "import platform, sys; print(platform.machine()); print('%d.%d' % sys.version_info[:2])",
            ],
            board=name,
        ).stdout.split()
        if len(probe) != 2:
            raise BoardError(
                name,
                f"cannot read the board's machine and Python version (got {probe!r}): is python3 installed?",
            )
        machine, python = probe
        installed = run_shell(
            client, f"cat {q(base + '/installed')} 2>/dev/null", check=False, board=name
        ).stdout
        alive = (
            run_shell(
                client,
                f'kill -0 "$(cat {q(base + "/supervisor.pid")} 2>/dev/null)" 2>/dev/null',
                check=False,
                board=name,
            ).code
            == 0
        )
        changed = not (installed.strip() == version and alive)
        if changed:
            _install(
                client, name, root, base, version, machine, python, port, pip_args, progress, board.runtimes
            )
        else:
            progress(f"agent {version} already installed and running: nothing to do")
        progress("waiting for the agent's health check through an SSH port forward")
        with (
            Tunnel(client, "127.0.0.1", port) as tunnel,
            # a slow board's first identity call imports its runtimes: a minute, not the default
            AgentClient(tunnel.address, name, timeout_s=IDENTITY_TIMEOUT_S) as agent,
        ):
            deadline = time.monotonic() + health_timeout_s
            while not agent.health(timeout_s=3):
                if time.monotonic() > deadline:
                    log = run_shell(
                        client, f"tail -n 20 {q(base + '/agent.log')}", check=False, board=name
                    ).stdout
                    _stop_agent(client, base, name)  # no half-working agent is left restarting
                    raise BoardError(
                        name,
                        f"the agent did not answer within {health_timeout_s:.0f} s (stopped again); "
                        f"{base}/agent.log ends with:\n{log.strip()[-1500:]}",
                    )
                time.sleep(0.5)
            identity = agent.identity()
        return BootstrapReport(name, version, changed, base, port, identity)
    finally:
        client.close()


def _stop_agent(client, base: str, name: str, reinstalling: bool = False) -> None:
    """Stop the agent (its supervisor then ends its loop). Before a reinstall, also forget the
    install (`installed`: a failed one never looks installed) and end the supervisor now."""
    q = shlex.quote
    forget = f"rm -f {q(base + '/installed')}; " if reinstalling else ""
    supervisor = (
        f'kill "$(cat {q(base + "/supervisor.pid")} 2>/dev/null)" 2>/dev/null; ' if reinstalling else ""
    )
    run_shell(
        client,
        f"{forget}rm -f {q(base + '/run.enabled')}; "
        f'kill "$(cat {q(base + "/agent.pid")} 2>/dev/null)" 2>/dev/null; {supervisor}true',
        board=name,
    )


@contextmanager
def _step(board: str, name: str, progress: Callable[[str], None]) -> Iterator[None]:
    """One named install step: a failure says which step, on which board, and that nothing runs."""
    progress(name)
    try:
        yield
    except BoardError as exc:
        raise BoardError(
            board, f"bootstrap stopped at step '{name}' (no agent left running): {exc.detail}"
        ) from None
    except (OSError, paramiko.SSHException) as exc:
        raise BoardError(
            board, f"bootstrap stopped at step '{name}' (no agent left running): {exc}", transient=True
        ) from None


def _install(
    client,
    name: str,
    root: Path,
    base: str,
    version: str,
    machine: str,
    python: str,
    port: int,
    pip_args: tuple[str, ...],
    progress: Callable[[str], None],
    runtimes: list[str],
) -> None:
    import platform

    q = shlex.quote
    with _step(name, "stopping the agent installed before", progress):
        _stop_agent(client, base, name, reinstalling=True)
    same = machine == platform.machine() and python == "{}.{}".format(*sys.version_info[:2])
    if not same:
        with _step(
            name, f"checking the board can compile the agent's kernels ({machine}, Python {python})", progress
        ):
            probe = run_shell(
                client,
                "command -v cc || command -v gcc; "
                'python3 -c \'import os, sysconfig; print(os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))\'',
                check=False,
                board=name,
            ).stdout.split()
            if len(probe) < 2:
                raise BoardError(
                    name,
                    f"no C compiler on the board: an sdist (the board is {machine}, this host "
                    f"{platform.machine()}) compiles the agent's kernels there; install one (Debian: apt-get install gcc)",
                )
            if probe[-1] != "True":
                raise BoardError(
                    name,
                    f"no Python {python} headers on the board (Python.h), which the agent's kernels "
                    "compile against; install them (Debian: apt-get install python3-dev)",
                )
    with tempfile.TemporaryDirectory(prefix="bibench-dist-") as tmp:
        with _step(name, f"building the agent {'wheel' if same else 'sdist'} ({version})", progress):
            try:
                package = build_package(root, Path(tmp), wheel=same)
            except UserError as exc:
                raise BoardError(name, str(exc)) from None
        remote = f"{base}/dist/{package.name}"
        with _step(name, f"copying {package.name} ({package.stat().st_size / 1e6:.1f} MB)", progress):
            run(client, ["mkdir", "-p", f"{base}/dist", f"{base}/store"], board=name)
            how = put_file(client, package.read_bytes(), remote, board=name)
            put_file(
                client,
                SUPERVISOR.format(port=int(port), name=q(name)).encode(),
                f"{base}/supervisor.sh",
                board=name,
                mode=0o755,
            )
        progress(f"copied by {'SFTP' if how == 'sftp' else 'an exec channel (the board offers no SFTP)'}")
    if run(client, ["test", "-x", f"{base}/venv/bin/python"], check=False, board=name).code != 0:
        with _step(name, "creating the agent's virtualenv", progress):
            run(client, ["python3", "-m", "venv", f"{base}/venv"], board=name)
    pip = [f"{base}/venv/bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    extras = sorted({RUNTIME_EXTRAS[r] for r in runtimes if r in RUNTIME_EXTRAS})
    target = f"{remote}[{','.join(extras)}]" if extras else remote
    listed = f", with the runtimes the inventory lists ({', '.join(extras)})" if extras else ""
    with _step(name, f"installing the agent's light dependencies (no torch){listed}", progress):
        run(client, [*pip, target, *pip_args], board=name, timeout_s=1800)
    with _step(
        name, "installing the agent" + ("" if same else " (compiling its kernels on the board)"), progress
    ):
        run(client, [*pip, "--force-reinstall", "--no-deps", remote, *pip_args], board=name, timeout_s=1800)
    with _step(name, "checking the agent's compiled kernels", progress):
        # the kernels' build is optional in setup.py (a board without a compiler still gets an
        # agent), so a failed compile would pass unnoticed: the custom runtime would run numpy
        found = run(
            client,
            [
                f"{base}/venv/bin/python",
                "-c",
                "from biagent import kernels; print(kernels.info().get('bconv', ''))",
            ],
            check=False,
            board=name,
        )
        if found.code != 0 or not found.stdout.strip():
            raise BoardError(
                name,
                "the agent's C kernels did not build on the board, so the custom runtime would run "
                f"its numpy reference; pip's build log: {base}/dist (rerun with pip_args -v). "
                f"{(found.stderr.strip().splitlines() or [''])[-1][:300]}",
            )
        progress(f"custom runtime's popcount kernel on the board: {found.stdout.strip()}")
    with _step(name, "starting the agent", progress):
        # Only the launch goes to the background, with every descriptor off the SSH channel: else the
        # channel (and this call) would wait for the supervisor to exit.
        run_shell(
            client,
            f"printf %s {q(version)} > {q(base + '/installed')} && touch {q(base + '/run.enabled')} && "
            f"cd {q(base)} && {{ setsid nohup sh supervisor.sh > /dev/null 2>&1 < /dev/null & }}",
            board=name,
        )
    progress(f"agent started under its supervisor (log: {base}/agent.log)")


def stop(
    board, endpoint: SshEndpoint, agent_dir: str = DEFAULT_DIR, accept_new_host_key: bool = False
) -> None:
    """Stop the supervisor and the agent (the install stays; bootstrap starts it again)."""
    client = connect(endpoint, accept_new_host_key)
    try:
        _stop_agent(client, expand_remote(agent_dir, remote_home(client, board.name)), board.name)
    finally:
        client.close()
