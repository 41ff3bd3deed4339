"""`bihost board`: list, show, add, rm on a copy of the shipped inventory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from bihost.commands.board import command
from bihost.errors import UserError
from bihost.inventory import Inventory, InventoryError, UnknownBoard

SHIPPED = Path(__file__).parents[2] / "inventory.yaml"


@pytest.fixture()
def inv_path(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    shutil.copy(SHIPPED, path)
    return path


def board(inv_path: Path, *args: str) -> Result:
    return CliRunner().invoke(command, [*args, "--inventory", str(inv_path)])


def test_group_is_extensible():
    assert isinstance(command, click.Group)
    assert {"list", "show", "add", "rm"} <= set(command.commands)


def test_list_json(inv_path):
    result = board(inv_path, "list", "--json")
    assert result.exit_code == 0, result.output
    boards = json.loads(result.output)
    assert len(boards) == 15 and boards[0]["name"] == "local" and boards[0]["address"] == "embedded"
    kirin = next(b for b in boards if b["name"] == "kirin970")
    assert kirin["cpu"]["clusters"][0] == "4x Cortex-A73 @ 2.36" and kirin["address"] is None


def test_list_table(inv_path):
    result = board(inv_path, "list")
    assert result.exit_code == 0, result.output
    assert (
        "kirin970" in result.output and "HiSilicon Kirin 970" in result.output and "embedded" in result.output
    )


def test_show(inv_path):
    result = board(inv_path, "show", "kirin970", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["name"] == "kirin970" and data["soc"] == "HiSilicon Kirin 970"
    assert data["runtimes"] == ["larq", "dabnn", "custom"]
    table = board(inv_path, "show", "kirin970")
    assert table.exit_code == 0 and "4x Cortex-A73 @ 2.36" in table.output


def test_show_unknown_board_lists_names(inv_path):
    result = board(inv_path, "show", "kirin971")
    assert result.exit_code == 1 and isinstance(result.exception, UnknownBoard)
    assert "unknown board 'kirin971'" in str(result.exception) and "kirin970" in str(result.exception)


def test_add_new_board(inv_path):
    result = board(
        inv_path,
        "add",
        "pi5",
        "--address",
        "10.0.0.7:50051",
        "--soc",
        "Broadcom BCM2712",
        "--arch",
        "arm64",
        "--os",
        "linux",
        "--runtime",
        "larq",
        "--runtime",
        "custom",
        "--cpu",
        "4x Cortex-A76 @ 2.40",
    )
    assert result.exit_code == 0, result.output
    assert "added board pi5" in result.output
    pi5 = Inventory.load(inv_path).get("pi5")
    assert (pi5.address, pi5.arch, pi5.runtimes, pi5.cpu_clusters) == (
        "10.0.0.7:50051",
        "arm64",
        ["larq", "custom"],
        ["4x Cortex-A76 @ 2.40"],
    )
    assert inv_path.read_text().startswith("# BiBench Farm board inventory.")


def test_add_address_to_a_paper_chip_keeps_its_data(inv_path):
    before = Inventory.load(inv_path)
    result = board(inv_path, "add", "kirin970", "--address", "10.0.0.5:50051")
    assert result.exit_code == 0, result.output
    after = Inventory.load(inv_path)
    kirin = after.get("kirin970")
    assert kirin.address == "10.0.0.5:50051"
    assert kirin.cpu_clusters == before.get("kirin970").cpu_clusters and kirin.soc == "HiSilicon Kirin 970"
    assert after.names() == before.names()  # same place in the file
    assert [b for b in after.boards() if b.name != "kirin970"] == [
        b for b in before.boards() if b.name != "kirin970"
    ]


def test_add_existing_registered_board_needs_replace(inv_path):
    assert board(inv_path, "add", "kirin970", "--address", "10.0.0.5:50051").exit_code == 0
    result = board(inv_path, "add", "kirin970", "--address", "10.0.0.6:50051")
    assert result.exit_code == 1 and isinstance(result.exception, InventoryError)
    assert "already exists" in str(result.exception) and "--replace" in str(result.exception)
    assert Inventory.load(inv_path).get("kirin970").address == "10.0.0.5:50051"
    result = board(inv_path, "add", "kirin970", "--address", "10.0.0.6:50051", "--replace", "--os", "linux")
    assert result.exit_code == 0, result.output
    kirin = Inventory.load(inv_path).get("kirin970")
    assert (kirin.address, kirin.os, kirin.soc) == ("10.0.0.6:50051", "linux", "HiSilicon Kirin 970")


def test_duplicate_add_raises_user_error_without_standalone_mode(inv_path):
    args = ["add", "local", "--address", "10.0.0.5:50051", "--inventory", str(inv_path)]
    with pytest.raises(UserError, match="board 'local': already exists with address embedded"):
        command.main(args=args, prog_name="bihost board", standalone_mode=False)


@pytest.mark.parametrize(
    "address, words",
    [
        ("foo", "board 'pi': address 'foo' is not HOST:PORT"),
        ("10.0.0.5:70000", "board 'pi': port 70000 out of range"),
    ],
)
def test_add_bad_address(inv_path, address, words):
    before = inv_path.read_text()
    result = board(inv_path, "add", "pi", "--address", address)
    assert result.exit_code == 1 and isinstance(result.exception, InventoryError)
    assert words in str(result.exception)
    assert inv_path.read_text() == before


def test_add_bad_choice_is_a_usage_error(inv_path):
    result = board(inv_path, "add", "pi", "--address", "h:1", "--runtime", "tflite")
    assert result.exit_code == 2 and "tflite" in result.output


def test_rm(inv_path):
    result = board(inv_path, "rm", "apple_m1")
    assert result.exit_code == 0, result.output
    assert "apple_m1" not in Inventory.load(inv_path)
    again = board(inv_path, "rm", "apple_m1")
    assert again.exit_code == 1 and isinstance(again.exception, UnknownBoard)


def test_default_inventory_from_env(inv_path, monkeypatch):
    monkeypatch.setenv("BIHOST_INVENTORY", str(inv_path))
    result = CliRunner().invoke(command, ["rm", "kirin9000"])
    assert result.exit_code == 0, result.output
    assert "kirin9000" not in Inventory.load(inv_path) and "kirin9000" in Inventory.load(SHIPPED)


def test_concurrent_board_adds_lose_no_update(inv_path):
    """Eight `bihost board add` processes at once: every board lands (the edit holds a lock)."""
    import fcntl
    import os
    import subprocess
    import sys
    import time

    def add(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bihost.cli",
                "board",
                "add",
                name,
                "--address",
                "127.0.0.1:50051",
                "--inventory",
                str(inv_path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    lock = os.open(inv_path.parent / f".{inv_path.name}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # hold the inventory: an add must wait, not write past us
    held = add("held-board")
    time.sleep(3)
    assert held.poll() is None and "held-board" not in Inventory.load(inv_path)
    fcntl.flock(lock, fcntl.LOCK_UN)
    os.close(lock)
    assert held.wait(60) == 0, held.stderr.read()
    procs = [add(f"racer{i}") for i in range(8)]
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    names = Inventory.load(inv_path).names()
    assert {"held-board", *(f"racer{i}" for i in range(8))} <= set(names)
