"""An emulated AArch64 board on this machine (bihost.emulated: a Debian arm64 root file system
under qemu-user, its own sshd on a loopback port), taken the way an operator takes a new
Raspberry Pi: bootstrap over SSH with the real known_hosts flow (the sdist path: the board is
not this host's architecture, so its kernels compile there, with NEON), check, profile against
torch on this host. Rows from it are marked emulated and kept out of every ratio and dashboard.

A separate CI stage (`-m emulated_board`, docs/emulated-board.md): a few minutes under emulation,
plus about three to build the root file system when the cache has none.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bihost.emulated import EmulatedBoard, build_rootfs, missing_requirements
from tests.conftest import free_port
from tests.e2e.test_profile import FAST, bihost

pytestmark = [pytest.mark.emulated_board, pytest.mark.timeout(2400)]
NAME = "rehearsal-a64"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    missing = missing_requirements()
    if missing:
        if os.environ.get("CI"):
            pytest.fail("CI must run the emulated-board stage; this host lacks " + "; ".join(missing))
        pytest.skip("no emulated board here: needs " + "; ".join(missing))
    d = tmp_path_factory.mktemp("emulated-board")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], check=True)
    emu = EmulatedBoard(
        d / "board", free_port(), (d / "client_key.pub").read_text(), build_rootfs(progress=print)
    )
    emu.start()
    try:
        yield emu, d / "client_key"
    finally:
        emu.stop()


def _inventory(
    path: Path, emu: EmulatedBoard, key: Path, known: Path, runtimes: list[str], port: int
) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "boards": {
                    NAME: {
                        "soc": "emulated AArch64 (qemu-user)",
                        "arch": "arm64",
                        "os": "linux",
                        "runtimes": runtimes,
                        "address": f"127.0.0.1:{port}",
                        "transport": "ssh",
                        "emulated": True,
                        "ssh": {
                            "host": "127.0.0.1",
                            "port": emu.port,
                            "user": "root",
                            "key_file": str(key),
                            "known_hosts_file": str(known),
                        },
                    }
                },
            }
        )
    )
    return path


def test_an_emulated_arm_board_bootstraps_from_the_sdist_and_profiles_apart(board, tmp_path):
    emu, key = board
    known, port, results = tmp_path / "known_hosts", free_port(), tmp_path / "results"
    agent_dir = emu.upper / "root" / ".bibench-agent"  # what the bootstrap writes on the board
    inv = _inventory(tmp_path / "inv.yaml", emu, key, known, ["custom", "larq"], port)
    bootstrap = ["board", "bootstrap", NAME, "--inventory", str(inv)]
    try:
        refused = bihost(*bootstrap)  # a host key nobody has seen: nothing is done
        assert refused.returncode == 1 and "--accept-new-host-key" in refused.stderr, refused.stderr
        assert not agent_dir.exists()

        # LCE publishes no AArch64 wheel: the install stops, names the step and the board, and
        # leaves no agent answering
        no_wheel = bihost(*bootstrap, "--accept-new-host-key", timeout=1800)
        assert no_wheel.returncode == 1, no_wheel.stdout
        assert (
            f"board {NAME}: bootstrap stopped at step 'installing the agent's light dependencies"
            in no_wheel.stderr
        )
        assert "larq-compute-engine" in no_wheel.stderr and "Traceback" not in no_wheel.stderr
        assert known.read_text() == emu.known_hosts_line()  # recorded once accepted: the real flow
        assert not (agent_dir / "installed").exists() and not (agent_dir / "run.enabled").exists()
        down = bihost("board", "check", NAME, "--inventory", str(inv))
        assert down.returncode == 1 and "not serving" in down.stderr + down.stdout

        _inventory(inv, emu, key, known, ["custom", "onnxruntime"], port)
        first = bihost(*bootstrap, "--json", timeout=1800)  # the key is known now: no flag needed
        assert first.returncode == 0, first.stderr
        report = json.loads(first.stdout)
        assert report["agent"]["machine"] == "aarch64" and report["changed"]
        assert report["runtimes"] == {"custom": True, "onnxruntime": True, "larq": False, "dabnn": False}
        shipped = [p.name for p in (agent_dir / "dist").iterdir()]
        assert len(shipped) == 1 and shipped[0].endswith(".tar.gz"), shipped  # the sdist path

        check = bihost("board", "check", NAME, "--inventory", str(inv), "--json")
        assert check.returncode == 0, check.stderr
        ident = json.loads(check.stdout)
        assert ident["healthy"] and ident["identity_ok"] and ident["agent"]["machine"] == "aarch64"
        assert ident["emulated"] and ident["looks_emulated"]  # qemu shows this host's x86 CPU
        assert "binary conv: neon" in ident["runtimes"]["custom"]["detail"]  # compiled there, NEON chosen

        prof = bihost(
            "profile", "--chip", NAME, "--algo", "bnn", "--runtime", "custom", *FAST,
            "--results", str(results), "--inventory", str(inv), "--json", timeout=1800,
        )  # fmt: skip
        assert prof.returncode == 0, prof.stderr
        rows = json.loads(prof.stdout)
        assert {(r["algorithm"], r["runtime"]) for r in rows} == {("fp32", "onnxruntime"), ("bnn", "custom")}
        assert all(r["status"] == "ok" and r["emulated"] for r in rows), rows  # numerics held vs torch
        assert all(r["agent"]["machine"] == "aarch64" and r["latency_ms"]["median"] > 0 for r in rows)
        assert all(r["speedup_vs_fp32"] is None for r in rows)  # no ratio from an emulated CPU

        from bihost.metrics import ResultsCollector
        from bihost.results import ResultsStore

        store = ResultsStore(results)
        assert all(m.emulated for m in store.rows()) and len(store.rows()) == 2
        measured = (
            "bibench_latency",
            "bibench_previous_latency",
            "bibench_speedup",
            "bibench_storage",
            "bibench_model_size",
            "bibench_measure",
            "bibench_numerics",
            "bibench_last_measurement",
        )
        exported = [
            s for f in ResultsCollector(store).collect() if f.name.startswith(measured) for s in f.samples
        ]
        assert not any(s.labels.get("board") == NAME for s in exported)  # on no dashboard
        table = bihost("results", "--results", str(results))
        assert f"{NAME} (emulated)" in table.stdout, table.stdout
    finally:
        bihost(*bootstrap, "--stop")


def test_board_emulate_runs_an_inventory_board_until_its_process_ends(board, tmp_path):
    # `board` (the module's board) only guarantees the root file system is built and cached
    inv, state, ssh_port = tmp_path / "inv.yaml", tmp_path / "state", free_port()
    entry = {"soc": "emulated AArch64 (qemu-user)", "arch": "arm64", "os": "linux", "emulated": True}
    inv.write_text(yaml.safe_dump({"version": 1, "boards": {NAME: {**entry, "runtimes": ["custom"]}}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bihost.cli", "board", "emulate", NAME, "--inventory", str(inv)]
        + ["--dir", str(state), "--ssh-port", str(ssh_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "emulated AArch64 board up" in _read_until(proc, "board up"), "the board did not come up"
        ssh = yaml.safe_load(inv.read_text())["boards"][NAME]["ssh"]  # written for it
        assert ssh["host"] == "127.0.0.1" and ssh["port"] == ssh_port and ssh["user"] == "root"
        login = subprocess.run(
            ["ssh", "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path / 'kh'}"]
            + ["-i", ssh["key_file"], "-p", str(ssh_port), "root@127.0.0.1", "uname -m"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert login.stdout.strip() == "aarch64", login.stderr
    finally:
        proc.kill()  # no chance to clean up: the board must still go (it dies with its parent)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", ssh_port)) != 0:
                break
        time.sleep(0.5)
    else:
        raise AssertionError("the emulated board outlived the process that ran it")


def _read_until(proc: subprocess.Popen, text: str, timeout_s: float = 600) -> str:
    seen, deadline = "", time.monotonic() + timeout_s
    while text not in seen and time.monotonic() < deadline and proc.stdout is not None:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    return seen
