"""The three kinds of error the CLI distinguishes (STYLE.md).

- UserError: the operator asked for something invalid; one line, exit 1.
- BoardError: a board misbehaved; one line naming the board, exit 1.
- anything else is internal: a traceback, because it is our bug.
"""
from __future__ import annotations


class UserError(Exception):
    """Invalid input from the operator: an unknown name, a bad path, a refused export."""


class BoardError(Exception):
    """A board (agent) failed; the message names the board."""

    def __init__(self, board: str, message: str):
        self.board = board
        super().__init__(f"board {board}: {message}")
