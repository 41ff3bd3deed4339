"""The track registry: `get_track(name)`, `list_tracks()`; one file per track."""

from . import learning_task, architecture, robustness, consumption, complexity, hardware  # noqa: F401,E402  # isort: skip  (registers, in table order)
from .base import TRACKS, BenchContext, Track, TrackResult, quadratic_mean, register_track


def get_track(name: str) -> Track:
    return TRACKS.get(name)


def list_tracks() -> list[str]:
    return TRACKS.names()


__all__ = [
    "BenchContext",
    "Track",
    "TrackResult",
    "get_track",
    "list_tracks",
    "quadratic_mean",
    "register_track",
]
