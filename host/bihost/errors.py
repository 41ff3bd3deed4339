"""The three kinds of error the CLI distinguishes (STYLE.md).

- UserError: the operator asked for something invalid; one line, exit 1.
- BoardError: a board misbehaved; one line naming the board, exit 1.
- anything else is internal: a traceback, because it is our bug.
"""

from __future__ import annotations


class UserError(Exception):
    """Invalid input from the operator: an unknown name, a bad path, a refused export."""


class BoardError(Exception):
    """A board (agent) failed; the message names the board.

    `transient` marks failures a retry may cure (unreachable, deadline, a crashed worker,
    a busy board) as opposed to ones it cannot (a refused model, a missing runtime, auth).
    """

    def __init__(self, board: str, message: str, transient: bool = False):
        self.board, self.transient, self.detail = board, transient, message
        super().__init__(f"board {board}: {message}")
