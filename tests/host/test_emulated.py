"""Emulated boards without emulating anything: how one is declared, recognised and kept apart.
(The board itself, under qemu-user, is tests/e2e/test_emulated_board.py.)"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from bihost import emulated
from bihost.bootstrap import _step
from bihost.client import AgentIdentity
from bihost.errors import BoardError
from bihost.inventory import Board, Inventory, InventoryError
from bihost.metrics import ResultsCollector
from bihost.results import ResultsStore
from bihost.tracks.base import BenchContext
from bihost.tracks.hardware import HardwareTrack

from .helpers import bihost
from .test_metrics import row


def _identity(machine: str, features: tuple[str, ...]) -> AgentIdentity:
    return AgentIdentity("b", "0", "h", "cpu", machine, 2, features, (), "linux", 0, "", None)


def test_an_arm_agent_showing_x86_flags_looks_emulated():
    assert _identity("aarch64", ("fpu", "sse2", "avx2")).looks_emulated()  # qemu-user: the host's cpuinfo
    assert not _identity("aarch64", ("fp", "asimd", "crc32")).looks_emulated()  # a real Cortex-A
    assert not _identity("x86_64", ("sse2", "avx2")).looks_emulated()


def test_the_inventory_declares_an_emulated_board_and_checks_it(tmp_path):
    entry = {"soc": "emulated AArch64 (qemu-user)", "arch": "arm64", "runtimes": ["custom"], "emulated": True}
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "boards": {"rehearsal": entry}}))
    board = Inventory.load(path).get("rehearsal")
    assert board.emulated and board.to_dict()["emulated"] is True
    assert "emulated" not in dataclasses.replace(board, emulated=False).to_dict()  # only when set
    with pytest.raises(InventoryError, match="emulated must be true or false"):
        Board(name="x", arch="arm64", emulated="yes")  # type: ignore[arg-type]
    with pytest.raises(InventoryError, match="names the architecture it emulates"):
        Board(name="x", arch="native", emulated=True)


def test_emulated_rows_feed_no_score_and_no_dashboard(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(row(board="rehearsal", emulated=True))
    real = row(board="rpi4", created_at=200.0)
    store.add(real)
    collected = [s for f in ResultsCollector(store).collect() for s in f.samples]
    assert {s.labels["board"] for s in collected if "board" in s.labels} == {"rpi4"}
    ctx = BenchContext(["reactnet"], ["resnet20"], [], measurements=store.rows())
    details = HardwareTrack().score(ctx).details
    assert [d["board"] for d in details] == ["rpi4"]
    assert [m.emulated for m in store.rows()] == [True, False]  # stored, marked, kept


def test_a_failed_bootstrap_step_names_itself_and_the_board():
    said = []
    with pytest.raises(BoardError) as err, _step("pi", "installing the agent", said.append):
        raise BoardError("pi", "`pip install` failed on the board (exit 1): ERROR: No matching distribution")
    assert str(err.value) == (
        "board pi: bootstrap stopped at step 'installing the agent' (no agent left running): "
        "`pip install` failed on the board (exit 1): ERROR: No matching distribution"
    )
    assert said == ["installing the agent"]


def test_the_rootfs_recipe_names_its_cache_entry():
    base = emulated.RootfsRecipe()
    assert base.digest() == emulated.RootfsRecipe().digest()
    assert base.digest() != dataclasses.replace(base, packages=(*base.packages, "vim")).digest()
    assert base.digest() != dataclasses.replace(base, suite="trixie").digest()


def test_a_host_without_the_tools_is_told_what_to_install(monkeypatch):
    monkeypatch.setattr(emulated.shutil, "which", lambda tool: None)
    monkeypatch.setattr(emulated, "BINFMT_CONF", emulated.Path("/nonexistent/qemu-aarch64.conf"))
    missing = " ".join(emulated.missing_requirements())
    assert "apt-get install debootstrap" in missing and "apt-get install qemu-user-static" in missing
    with pytest.raises(emulated.EmulationError, match="cannot run on this host"):
        emulated.require_host()


def test_board_add_registers_an_emulated_board(tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "boards": {}}))
    out = bihost(
        "board", "add", "rehearsal", "--address", "127.0.0.1:50051", "--arch", "arm64", "--transport", "ssh",
        "--emulated", "--inventory", str(path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert Inventory.load(path).get("rehearsal").emulated


def test_board_emulate_refuses_a_board_that_is_not_declared_emulated(tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "boards": {"pi": {"soc": "bcm2711", "arch": "arm64"}}}))
    out = bihost("board", "emulate", "pi", "--inventory", str(path))
    assert out.returncode == 1 and "needs `emulated: true`" in out.stderr, out.stderr
