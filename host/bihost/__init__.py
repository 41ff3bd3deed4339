"""bihost: the host controller of BiBench Farm (CLI, inventory, deploy, tracks, reports)."""

from biagent import __version__

__all__ = ["__version__"]
