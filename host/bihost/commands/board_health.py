"""`bihost board health` and `bihost board maintenance NAME`: the boards' scheduling states.

States live in the results store (the scheduler's side), in the spirit of LAVA: `good` is
scheduled; `bad` (it stopped answering during a campaign) is scheduled again only after a
passing health check; `maintenance` is never scheduled until an operator returns it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from ..output import print_json, print_table
from .results import results_dir_option


@click.command("health")
@results_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def health(results_dir: Path, as_json: bool) -> None:
    """Each board's state: good, bad (with why) or maintenance. Boards never marked are good."""
    from ..results import ResultsStore

    states = ResultsStore(results_dir).board_states()
    if as_json:
        print_json({b: {"state": s.state, "reason": s.reason, "since": s.since} for b, s in states.items()})
        return
    print_table(
        "board states",
        ["board", "state", "since", "reason"],
        [
            (b, s.state, dt.datetime.fromtimestamp(s.since).strftime("%Y-%m-%d %H:%M:%S"), s.reason)
            for b, s in states.items()
        ],
    )


@click.command("maintenance")
@click.argument("name")
@click.option("--off", is_flag=True, help="Return the board: it is health-checked before its next campaign.")
@click.option("--reason", default="", help="Why (shown to whoever tries to profile it).")
@results_dir_option
def maintenance(name: str, off: bool, reason: str, results_dir: Path) -> None:
    """Take NAME out of scheduling (or return it with --off)."""
    from ..results import ResultsStore

    store = ResultsStore(results_dir)
    if off:
        store.set_board_state(name, "bad", "back from maintenance: health check pending")
        click.echo(f"board {name} leaves maintenance; its next campaign starts with a health check")
    else:
        store.set_board_state(name, "maintenance", reason or "set by an operator")
        click.echo(f"board {name} is in maintenance: not scheduled")
