"""bihost: the host controller of BiBench Farm (CLI, inventory, deploy, tracks, reports)."""

__version__ = "0.1.0"
