"""The agent must install and run on a board without torch (docs/design.md)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_agent_does_not_import_torch():
    code = "import sys, biagent, biproto; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
