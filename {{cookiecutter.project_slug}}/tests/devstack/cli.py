"""``python -m devstack <command>`` as a user runs it, for the tests of its refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

PROJECT_DIR = Path(__file__).parents[2]


def run_cli(
    command: str, state_dir: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run it from the project directory with its state in ``state_dir``; ``env`` overrides."""
    return subprocess.run(
        [sys.executable, "-m", "devstack", command],
        cwd=PROJECT_DIR,
        env={**os.environ, "DEVSTACK_DIR": str(state_dir), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
