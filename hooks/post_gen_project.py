"""Remove the files of components that were switched off.

Whole files and folders go, so the baked code carries no dead branches. Needs no network
and only touches the freshly baked folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ANSWERS: dict[str, str] = {
    "ci": "{{ cookiecutter.ci }}",
}

# component answer -> paths (relative to the project root) that exist only for it
REMOVE_WHEN_OFF: dict[tuple[str, str], list[str]] = {
    ("ci", "none"): [".github"],
}


def main() -> None:
    root = Path.cwd()
    for (question, value), paths in REMOVE_WHEN_OFF.items():
        if ANSWERS[question] != value:
            continue
        for relative in paths:
            target = root / relative
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


if __name__ == "__main__":
    main()
