"""An emulated AArch64 board on this machine, for a lab without ARM hardware to rehearse with.

What it is: a minimal Debian arm64 root file system (debootstrap, from Debian's packages),
every program in it run by qemu-user through the kernel's binfmt_misc, with its own OpenSSH
server on a loopback port, its own host key and an authorized key. `bihost board bootstrap`
then takes the path it takes with a new Raspberry Pi: probe over SSH, ship an sdist (the board
is not this host's architecture), compile the C kernels there with NEON, install the runtimes
the inventory lists from AArch64 wheels, start the agent, check its identity.

What it is not: a board. Its CPU is this host's, translated instruction by instruction, so its
latencies say nothing about any ARM chip; rows profiled on it are marked emulated in the store
and never feed a ratio, a track score, a report figure or a dashboard (docs/emulated-board.md).

How it runs, and why:
- The root file system is built once per recipe (suite, mirror, packages) and cached under
  `cache_dir()/<recipe digest>/rootfs`; a changed recipe builds a new one. A run never writes
  to it: each start mounts an overlay whose upper layer is the board's own directory, so what a
  bootstrap installs lives there and goes with it.
- The server runs in its own mount and PID namespaces (`unshare`): the overlay, /proc, /dev and
  /sys mounts exist only there, and when the server stops the kernel ends every process the
  board started (the agent, its supervisor), so nothing outlives the board.
- binfmt_misc is mounted and qemu-aarch64 registered (from Debian's qemu-user-static, with the
  fix-binary flag, so the interpreter is found inside the chroot) only when missing, and undone
  on release by whoever did it.
- The board reaches the package registries this host reaches: it gets this host's DNS servers
  and CA bundle (and pip is told to use it), nothing else; and pip constraints for what the
  emulator cannot run (EMULATION_CONSTRAINTS).

Needs root (debootstrap, mount, chroot) and Debian's `debootstrap` and `qemu-user-static`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError

RECIPE_VERSION = 1  # bump when the build steps below change what a recipe produces
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_NAME = "qemu-aarch64"
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # Debian's qemu-user-static
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CONFIG_DIR = "/etc/ssh/bibench"  # inside the board: its sshd config and host key
# What the emulator cannot run, kept off the board by pip constraints (its /etc/pip.conf):
# onnxruntime 1.32 dies of SIGSEGV on import under Debian 12's qemu-user 7.2; 1.17.3, 1.20.1,
# 1.22.1 and 1.23.2 import (checked on this board). A real board gets no constraint.
EMULATION_CONSTRAINTS = ("onnxruntime<1.24",)


class EmulationError(UserError):
    """This host cannot make or run an emulated board; the message says what to install or do."""


@dataclass(frozen=True)
class RootfsRecipe:
    """What the board's root file system is built from; its digest names the cache entry."""

    suite: str = "bookworm"
    arch: str = "arm64"
    mirror: str = "http://deb.debian.org/debian"
    # python3-dev and gcc: the agent's sdist compiles its C kernels on the board
    packages: tuple[str, ...] = (
        "ca-certificates",
        "gcc",
        "libc6-dev",
        "openssh-server",
        "python3",
        "python3-dev",
        "python3-venv",
    )

    def digest(self) -> str:
        text = json.dumps({"recipe": asdict(self), "version": RECIPE_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where built root file systems are kept between runs (BIBENCH_CACHE overrides)."""
    base = os.environ.get("BIBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bibench-farm"
    )
    return Path(base) / "emulated-boards"


def missing_requirements() -> list[str]:
    """What this host lacks to run an emulated board, each with its remedy ([] when nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (debootstrap, mount and chroot need it): run as root or in a root container")
    for tool, package in (("debootstrap", "debootstrap"), ("unshare", "util-linux"), ("chroot", "coreutils")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    if not BINFMT_CONF.exists():
        missing.append(f"{BINFMT_CONF} (apt-get install qemu-user-static)")
    return missing


def require_host() -> None:
    missing = missing_requirements()
    if missing:
        raise EmulationError("an emulated board cannot run on this host; it needs " + "; ".join(missing))


# -- binfmt_misc --------------------------------------------------------------------------
@dataclass
class Binfmt:
    """qemu-aarch64 registered with binfmt_misc, and what this process did to get there."""

    mounted: bool = False
    registered: bool = False

    def release(self) -> None:
        """Undo what `ensure_binfmt` did (an entry or mount that was there before stays)."""
        if self.registered:
            with contextlib.suppress(OSError):
                (BINFMT_DIR / BINFMT_NAME).write_text("-1")
            self.registered = False
        if self.mounted:
            subprocess.run(["umount", str(BINFMT_DIR)], capture_output=True)
            self.mounted = False


def ensure_binfmt() -> Binfmt:
    """Mount binfmt_misc and register qemu-aarch64 (fix-binary) when they are missing."""
    state = Binfmt()
    if not (BINFMT_DIR / "register").exists():
        proc = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], capture_output=True, text=True
        )
        if proc.returncode:
            raise EmulationError(f"cannot mount binfmt_misc at {BINFMT_DIR}: {proc.stderr.strip()}")
        state.mounted = True
    entry = BINFMT_DIR / BINFMT_NAME
    if not entry.exists():
        line = BINFMT_CONF.read_text().strip()
        try:
            (BINFMT_DIR / "register").write_text(line)
        except OSError as exc:
            state.release()
            raise EmulationError(f"cannot register {BINFMT_NAME} with binfmt_misc: {exc}") from exc
        state.registered = True
    text = entry.read_text()
    flags = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("flags:")), "")
    if "enabled" not in text or "F" not in flags:
        state.release()
        raise EmulationError(
            f"binfmt_misc's {BINFMT_NAME} entry is disabled or lacks the fix-binary flag (F), so it "
            f"cannot run inside a chroot; remove it (echo -1 > {entry}) to let the board register its own"
        )
    return state


# -- the root file system ----------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def build_rootfs(
    recipe: RootfsRecipe | None = None,
    cache: Path | None = None,
    progress: Callable[[str], None] = lambda msg: None,
) -> Path:
    """The recipe's root file system, from the cache or built now (a few minutes, once)."""
    recipe = recipe or RootfsRecipe()
    entry = (cache or cache_dir()) / recipe.digest()
    rootfs = entry / "rootfs"
    with _locked(entry.with_name(entry.name + ".lock")):
        if (entry / "recipe.json").exists():
            return rootfs
        require_host()
        staging = entry.with_name(entry.name + ".building")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        progress(f"building a Debian {recipe.suite} {recipe.arch} root file system (once per recipe)")
        started = time.monotonic()
        binfmt = ensure_binfmt()  # debootstrap's second stage runs the target's programs
        try:
            proc = subprocess.run(
                [
                    "debootstrap",
                    f"--arch={recipe.arch}",
                    "--variant=minbase",
                    f"--include={','.join(recipe.packages)}",
                    recipe.suite,
                    str(staging / "rootfs"),
                    recipe.mirror,
                ],
                capture_output=True,
                text=True,
                timeout=3600,
            )
        finally:
            binfmt.release()
        if proc.returncode:
            log = (proc.stdout + proc.stderr).strip()[-1500:]
            shutil.rmtree(staging, ignore_errors=True)
            raise EmulationError(f"debootstrap of the emulated board's root file system failed:\n{log}")
        meta = {
            "recipe": asdict(recipe),
            "version": RECIPE_VERSION,
            "build_seconds": time.monotonic() - started,
        }
        (staging / "recipe.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(entry, ignore_errors=True)
        staging.rename(entry)
        progress(f"root file system ready ({meta['build_seconds']:.0f} s): {rootfs}")
    return rootfs


# -- the board --------------------------------------------------------------------------
SSHD_CONFIG = """# written by bibench-farm's emulated board
Port {port}
ListenAddress 127.0.0.1
HostKey {config_dir}/host_key
PidFile /run/sshd-bibench.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AuthorizedKeysFile {config_dir}/authorized_keys
UsePAM no
AllowTcpForwarding yes
Subsystem sftp internal-sftp
LogLevel ERROR
"""


def _die_with_parent() -> None:
    """In the child before exec: killed when the process that started the board dies, so a
    killed `bihost board emulate` or test run leaves no board behind. SIGKILL, because unshare
    ignores SIGTERM while its child runs; its own death then ends the child (--kill-child)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class EmulatedBoard:
    """One emulated board: `start()` runs its sshd on 127.0.0.1:`port` until `stop()`.

    `directory` holds the board's own state (the overlay's upper layer: whatever a bootstrap
    installs), `authorized_key` is the public key a client logs in as root with, and the
    board's host key is made on first start and kept, so known_hosts stays valid across starts.
    """

    directory: Path
    port: int
    authorized_key: str
    rootfs: Path
    binfmt: Binfmt = field(default_factory=Binfmt)
    proc: subprocess.Popen | None = None

    @property
    def upper(self) -> Path:
        return self.directory / "upper"

    @property
    def host_key_pub(self) -> str:
        return (self.upper / CONFIG_DIR.lstrip("/") / "host_key.pub").read_text().strip()

    def known_hosts_line(self) -> str:
        kind, key = self.host_key_pub.split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"

    def _prepare(self) -> None:
        config = self.upper / CONFIG_DIR.lstrip("/")
        config.mkdir(parents=True, exist_ok=True)
        if not (config / "host_key").exists():
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "bibench-emulated-board",
                    "-f",
                    str(config / "host_key"),
                ],
                check=True,
            )
        (config / "authorized_keys").write_text(self.authorized_key.strip() + "\n")
        os.chmod(config / "authorized_keys", 0o600)
        (config / "sshd_config").write_text(SSHD_CONFIG.format(port=self.port, config_dir=CONFIG_DIR))
        etc = self.upper / "etc"
        for host_file in (Path("/etc/resolv.conf"),):
            if host_file.exists():
                shutil.copyfile(host_file, etc / host_file.name)
        pip_conf = ""
        if HOST_CA_BUNDLE.exists():  # this host's trust store: the registries it reaches, the board reaches
            (etc / "ssl" / "certs").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HOST_CA_BUNDLE, etc / "ssl" / "certs" / HOST_CA_BUNDLE.name)
            pip_conf += f"[global]\ncert = {HOST_CA_BUNDLE}\n"
        (etc / "bibench-emulation-constraints.txt").write_text(
            "".join(f"{c}\n" for c in EMULATION_CONSTRAINTS)
        )
        pip_conf += "[install]\nconstraint = /etc/bibench-emulation-constraints.txt\n"
        (etc / "pip.conf").write_text(pip_conf)
        for d in ("work", "merged"):
            (self.directory / d).mkdir(parents=True, exist_ok=True)

    def start(self, timeout_s: float = 60.0) -> None:
        require_host()
        self._prepare()
        self.binfmt = ensure_binfmt()
        merged = self.directory / "merged"
        q = shlex.quote
        script = " && ".join(
            [
                "mount -t overlay overlay -o "
                + q(f"lowerdir={self.rootfs},upperdir={self.upper},workdir={self.directory / 'work'}")
                + f" {q(str(merged))}",
                f"mount -t proc proc {q(str(merged / 'proc'))}",
                f"mount --rbind /dev {q(str(merged / 'dev'))}",
                f"mount --rbind /sys {q(str(merged / 'sys'))}",
                f"mkdir -p {q(str(merged / 'run' / 'sshd'))}",
                f"exec chroot {q(str(merged))} /usr/sbin/sshd -D -e -f {CONFIG_DIR}/sshd_config",
            ]
        )
        log = open(self.directory / "sshd.log", "ab")
        self.proc = subprocess.Popen(
            [
                "unshare",
                "--fork",
                "--pid",
                "--mount",
                "--propagation",
                "private",
                "--kill-child=SIGTERM",
                "sh",
                "-c",
                script,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.directory / "sshd.log").read_text(errors="replace")[-1500:]
                raise EmulationError(f"the emulated board's sshd did not start on port {self.port}:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        """End the board: its sshd and, with it, every process it started; undo binfmt changes."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        self.proc = None
        self.binfmt.release()
