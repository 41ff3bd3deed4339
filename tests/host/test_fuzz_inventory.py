"""Fuzzed inventory files (bench/fuzz.py runs 10,000+): each loads or is an InventoryError naming the file."""

from __future__ import annotations

from tests.fuzz import inventory_files


def test_fuzzed_inventories_load_or_fail_clearly(tmp_path):
    outcomes = inventory_files(tmp_path, 300)
    assert sum(outcomes.values()) == 300 and outcomes.get("rejected"), outcomes
