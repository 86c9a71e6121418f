"""Format the template's Python files with ruff, through a bake.

ruff cannot read Jinja, so: bake the default project, run `ruff check --fix` and
`ruff format` on it, and copy every changed file back with the slug turned into its
placeholder again. Files whose template holds other Jinja than the slug are only reported.

    python tools/format_template.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "{{cookiecutter.project_slug}}"
SLUG = "ninefold_shop"
PLACEHOLDER = "{{ cookiecutter.project_slug }}"
OTHER_JINJA = re.compile(r"\{\{(?! cookiecutter\.project_slug \}\})|\{%")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        baked = Path(cookiecutter(str(ROOT), no_input=True, output_dir=tmp))
        before = {p: p.read_text() for p in baked.rglob("*.py")}
        subprocess.run(["ruff", "check", "--fix", "--quiet", "."], cwd=baked, check=False)
        subprocess.run(["ruff", "format", "--quiet", "."], cwd=baked, check=True)
        skipped = []
        for path, old in before.items():
            new = path.read_text()
            if new == old:
                continue
            relative = path.relative_to(baked)
            source = PROJECT / Path(
                *[PLACEHOLDER.replace(" ", "") if part == SLUG else part for part in relative.parts]
            )
            if OTHER_JINJA.search(source.read_text()):
                skipped.append(str(relative))
                continue
            source.write_text(new.replace(SLUG, PLACEHOLDER))
            print(f"formatted {relative}")
        for relative in skipped:
            print(f"needs a hand edit (holds other Jinja): {relative}", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())
