"""Printing for the CLI: JSON for scripts, rich tables for people."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
if not console.is_terminal:  # pipes and CI logs: do not squeeze tables into 80 columns
    console = Console(width=200)


def print_json(data: Any) -> None:
    # Plain print: rich would wrap long lines and insert colour codes.
    print(json.dumps(data, indent=2, sort_keys=False))


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [list(r) for r in rows]
    table = Table(title=title)
    for i, col in enumerate(columns):
        numeric = i > 0 and rows and all(isinstance(r[i], (int, float)) or _looks_numeric(r[i]) for r in rows)
        table.add_column(col, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)


def _looks_numeric(v: Any) -> bool:
    text = str(v).rstrip("x%").replace(",", "").replace("e-", "").replace("e+", "")
    return text == "" or text.replace(".", "", 1).lstrip("-").isdigit()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, int):
        return _si(v)
    return str(v)


def _si(n: int) -> str:
    """1,814,073,344 -> 1.81G: counts people compare by order of magnitude."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
