"""`bihost board bootstrap` over a real sshd, then the board used through its SSH forward."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import yaml

from tests.conftest import free_port
from tests.e2e.test_profile import FAST, bihost


def _stop_board(name: str, inv, agent_dir) -> None:
    """Stop the bootstrapped agent and, should that fail, its supervisor."""
    bihost("board", "bootstrap", name, "--inventory", str(inv), "--stop")
    sup = agent_dir / "supervisor.pid"
    if sup.exists():
        try:
            os.kill(int(sup.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass


def test_bootstrap_then_check_and_profile_through_ssh(sshd, tmp_path):
    known, agent_dir, port = tmp_path / "known_hosts", tmp_path / "board-agent", free_port()
    inv = tmp_path / "inv.yaml"
    inv.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "boards": {
                    "pi": {
                        "soc": "test board over ssh",
                        "arch": "native",
                        "os": "linux",
                        "runtimes": ["custom", "onnxruntime"],
                        "address": f"127.0.0.1:{port}",
                        "transport": "ssh",
                        "ssh": sshd.ssh_settings(known, agent_dir=str(agent_dir)),
                    }
                },
            }
        )
    )
    args = ["board", "bootstrap", "pi", "--inventory", str(inv), "--json"]
    try:
        refused = bihost(*args)
        assert refused.returncode == 1 and "--accept-new-host-key" in refused.stderr, refused.stderr
        assert not agent_dir.exists()  # nothing was done on an unverified host

        first = bihost(*args, "--accept-new-host-key")
        assert first.returncode == 0, first.stderr
        report = json.loads(first.stdout)
        assert report["changed"] and report["agent"]["name"] == "pi" and report["runtimes"]["custom"]
        venv_python = str(agent_dir / "venv" / "bin" / "python")
        assert subprocess.run([venv_python, "-c", "import biagent, grpc, numpy"]).returncode == 0
        assert (
            subprocess.run([venv_python, "-c", "import torch"], capture_output=True).returncode != 0
        )  # light
        assert (agent_dir / "agent.log").exists()

        started = time.monotonic()
        again = bihost(*args)
        assert again.returncode == 0 and not json.loads(again.stdout)["changed"], again.stderr
        assert time.monotonic() - started < 30  # idempotent: nothing rebuilt or reinstalled

        check = bihost("board", "check", "pi", "--inventory", str(inv), "--json")
        assert check.returncode == 0 and json.loads(check.stdout)["healthy"], check.stderr
        results = tmp_path / "results"
        prof = bihost(
            "profile",
            "--chip",
            "pi",
            "--algo",
            "bnn",
            "--runtime",
            "custom",
            *FAST,
            "--results",
            str(results),
            "--inventory",
            str(inv),
            "--json",
        )
        assert prof.returncode == 0, prof.stderr
        rows = json.loads(prof.stdout)
        assert {r["runtime"] for r in rows} == {"custom", "onnxruntime"} and all(
            r["status"] == "ok" for r in rows
        )

        old_pid = int((agent_dir / "agent.pid").read_text())
        os.kill(old_pid, signal.SIGKILL)  # the agent crashes: its supervisor restarts it
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pid = (agent_dir / "agent.pid").read_text().strip() if (agent_dir / "agent.pid").exists() else ""
            if (
                pid
                and int(pid) != old_pid
                and bihost("board", "check", "pi", "--inventory", str(inv)).returncode == 0
            ):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the supervisor did not bring the agent back")
    finally:
        _stop_board("pi", inv, agent_dir)


def test_bootstrap_on_a_board_without_sftp_copies_over_an_exec_channel(sshd_without_sftp, tmp_path):
    sshd = sshd_without_sftp
    known, agent_dir, port = tmp_path / "known_hosts", tmp_path / "board-agent", free_port()
    inv = tmp_path / "inv.yaml"
    inv.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "boards": {
                    "dropbear-like": {
                        "soc": "a board whose sshd has no sftp",
                        "arch": "native",
                        "os": "linux",
                        "runtimes": ["custom"],
                        "address": f"127.0.0.1:{port}",
                        "transport": "ssh",
                        "ssh": sshd.ssh_settings(known, agent_dir=str(agent_dir)),
                    }
                },
            }
        )
    )
    try:
        out = bihost("board", "bootstrap", "dropbear-like", "--inventory", str(inv), "--accept-new-host-key")
        assert out.returncode == 0, out.stderr
        assert (
            "Traceback" not in out.stderr
            and "exec channel (the board offers no SFTP)" in out.stdout + out.stderr
        )
        assert os.access(agent_dir / "supervisor.sh", os.X_OK) and not list(
            (agent_dir / "dist").glob("*.part")
        )
        check = bihost("board", "check", "dropbear-like", "--inventory", str(inv), "--json")
        assert check.returncode == 0 and json.loads(check.stdout)["healthy"], check.stderr
    finally:
        _stop_board("dropbear-like", inv, agent_dir)
