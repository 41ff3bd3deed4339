"""The one error type of the data readers."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A dataset that is missing or malformed; the message names the file and the fault."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")
