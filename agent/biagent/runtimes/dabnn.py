"""daBNN (JDAI-CV/dabnn): present in the registry, not yet runnable.

daBNN is not packaged for pip; the runtime will drive a board's own daBNN build through a
small driver once the daBNN exporter exists. Until then it says so instead of pretending.
"""
from __future__ import annotations

import os
from pathlib import Path

from .base import LoadedModel, Runtime, RuntimeInfo, RuntimeNotInstalled

CONFIG_KEY = "BIAGENT_DABNN_ROOT"


class DabnnRuntime(Runtime):
    name = "dabnn"
    formats = ("dabnn", "dab")

    @classmethod
    def describe(cls) -> RuntimeInfo:
        root = os.environ.get(CONFIG_KEY, "")
        if not root:
            return RuntimeInfo(cls.name, False, detail=f"not installed: set {CONFIG_KEY} to a daBNN build "
                               "(library + headers)", formats=cls.formats)
        return RuntimeInfo(cls.name, False, detail=f"{CONFIG_KEY}={root} is set, but this agent has no daBNN driver "
                           "yet (the daBNN exporter and driver arrive with the export issue)", formats=cls.formats)

    def load(self, path: Path, threads: int) -> LoadedModel:
        raise RuntimeNotInstalled(self.describe().detail)
