"""The shipped inventory: the paper's 14 chips plus the embedded `local` board."""

from __future__ import annotations

from pathlib import Path

import yaml


def test_inventory_names_the_papers_chips_and_local():
    data = yaml.safe_load((Path(__file__).parents[2] / "inventory.yaml").read_text())
    boards = data["boards"]
    assert len([b for b in boards if b != "local"]) == 14
    assert boards["kirin970"]["cpu"]["clusters"][0].startswith("4x Cortex-A73")
    assert all(b["address"] is None for n, b in boards.items() if n != "local")
