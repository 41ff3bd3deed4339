"""Shared fixtures: deterministic seeds and trained-looking models."""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class AgentProcess:
    """A real `biagent serve` process on 127.0.0.1, on a port the agent picked itself."""

    def __init__(self, store: Path, name: str = "test-board", extra: tuple[str, ...] = ()):
        self.store, self.name = store, name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "biagent.cli", "serve", "--host", "127.0.0.1", "--port", "0",
             "--store", str(store), "--name", name, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
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

    def start(name: str = "test-board", store: Path | None = None, extra: tuple[str, ...] = ()) -> AgentProcess:
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
