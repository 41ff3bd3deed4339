"""`bihost`: the command line. Each verb lives in `bihost.commands.<verb>` as a thin wrapper."""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import BoardError, UserError


def _user_errors() -> tuple[type[BaseException], ...]:
    """Library errors that mean "you asked for something invalid", not "we have a bug"."""
    from bimodels import BinarizationError, ExportError, UnknownNameError
    from bimodels.data import DataError
    from bimodels.tasks import TaskError

    return (UserError, BoardError, UnknownNameError, BinarizationError, ExportError, DataError, TaskError)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bihost")
def cli() -> None:
    """BiBench Farm host: binarize, count, export and profile binarized networks."""


def _register_commands() -> None:
    from .commands import (
        bench,
        board,
        board_bootstrap,
        board_check,
        board_emulate,
        board_health,
        certs,
        complexity,
        export,
        matrix,
        metrics,
        models,
        profile,
        report,
        results,
    )

    board.command.add_command(board_check.command)
    board.command.add_command(board_bootstrap.command)
    board.command.add_command(board_emulate.command)
    board.command.add_command(board_health.health)
    board.command.add_command(board_health.maintenance)
    for module in (
        bench,
        report,
        models,
        complexity,
        export,
        matrix,
        board,
        profile,
        results,
        metrics,
        certs,
    ):
        cli.add_command(module.command)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="bihost", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except _user_errors() as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
