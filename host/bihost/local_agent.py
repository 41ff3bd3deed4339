"""The embedded default board: an agent on this machine, started on a free loopback port.

`bihost profile --chip local` needs no setup: the host starts `biagent serve --port 0`
as a child process, reads the port it prints, and stops it when the host exits.
"""

from __future__ import annotations

import atexit
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .errors import BoardError

_LISTENING = re.compile(r"biagent listening on (\S+):(\d+)")


def default_store_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bibench-farm" / "local-agent"


class LocalAgent:
    def __init__(self, store_dir: Path | None = None, name: str = "local", startup_timeout_s: float = 60.0):
        self.store_dir = Path(store_dir or default_store_dir())
        self.name, self.startup_timeout_s = name, startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.log: list[str] = []
        self._private: tempfile.TemporaryDirectory | None = None

    def start(self) -> LocalAgent:
        try:
            return self._start()
        except BoardError:
            if not any("serves the store" in line for line in self.log):
                raise
        # Another host's embedded agent holds the shared store (one agent per store): this one
        # gets a private store for its lifetime.
        self._private = tempfile.TemporaryDirectory(prefix="bibench-local-agent-")
        self.store_dir, self.log = Path(self._private.name), []
        return self._start()

    def _start(self) -> LocalAgent:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "biagent.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--store",
                str(self.store_dir),
                "--name",
                self.name,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        atexit.register(self.stop)
        found = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line)
                m = _LISTENING.search(line)
                if m and not found.is_set():
                    self.address = f"{m.group(1)}:{m.group(2)}"
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(self.startup_timeout_s) or not self.address:
            self.stop()
            tail = "".join(self.log[-5:]).strip()
            raise BoardError(self.name, f"the embedded agent did not start: {tail or 'no output'}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._private is not None:
            self._private.cleanup()
            self._private = None

    def __enter__(self) -> LocalAgent:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
