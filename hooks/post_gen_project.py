"""Remove the files of components that were switched off, then lock the dependencies.

Whole files and folders go, so the baked code carries no dead branches. Then ``uv lock``
writes ``uv.lock``: the Dockerfile installs with ``--locked``, so ``docker compose up --build``
works right after baking. Locking asks PyPI; without uv or without network the bake still
succeeds and says, in one sentence, what to run before building the image.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ANSWERS: dict[str, str] = {
    "ci": "{{ cookiecutter.ci }}",
}

# component answer -> paths (relative to the project root) that exist only for it
REMOVE_WHEN_OFF: dict[tuple[str, str], list[str]] = {
    ("ci", "none"): [".github"],
}

LOCK_TIMEOUT_SECONDS = 300


def remove_switched_off(root: Path) -> None:
    for (question, value), paths in REMOVE_WHEN_OFF.items():
        if ANSWERS[question] != value:
            continue
        for relative in paths:
            target = root / relative
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def failure_reason(stderr: str) -> str:
    """uv's error in one line: its first ``error:`` and the innermost ``cause:``."""
    lines = [line.strip() for line in stderr.splitlines()]
    errors = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    causes = [line.removeprefix("cause:").strip() for line in lines if line.startswith("cause:")]
    return ": ".join(part for part in (errors[:1] + causes[-1:]) if part)


def lock(root: Path) -> None:
    """Write uv.lock, or say in one sentence why not and what to run instead."""
    later = f"run `uv lock` in {root} before `docker compose up --build` or `docker build`"
    uv = shutil.which("uv")
    if uv is None:
        print(f"ninefold: uv is not installed, so no uv.lock was written; {later}.")
        return
    try:
        result = subprocess.run(
            [uv, "lock", "--quiet"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=LOCK_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        waited = f"`uv lock` took over {LOCK_TIMEOUT_SECONDS} s (is PyPI reachable?)"
        print(f"ninefold: {waited}; {later}.")
        return
    if result.returncode != 0:
        reason = failure_reason(result.stderr) or f"exit {result.returncode}"
        print(f"ninefold: `uv lock` failed ({reason}), so no uv.lock was written; {later}.")


def main() -> None:
    root = Path.cwd()
    remove_switched_off(root)
    lock(root)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
