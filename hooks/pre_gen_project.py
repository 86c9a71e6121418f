"""Reject template answers that would bake a broken project.

Runs before any file is written, so a bad answer leaves nothing behind. Every failure
prints one sentence that says what was wrong and what to answer instead, then exits 1.
"""

from __future__ import annotations

import keyword
import re
import sys

SLUG = "{{ cookiecutter.project_slug }}"

ANSWERS: dict[str, str] = {
    "python_version": "{{ cookiecutter.python_version }}",
    "ci": "{{ cookiecutter.ci }}",
}

# Names the baked project imports or ships next to its own package; a package with one
# of these names would shadow it and fail with a confusing ImportError at run time.
RESERVED_NAMES = {
    "alembic",
    "asyncpg",
    "bench",
    "boto3",
    "celery",
    "deploy",
    "fastapi",
    "httpx",
    "jwt",
    "migrations",
    "orjson",
    "prometheus_client",
    "pwdlib",
    "pydantic",
    "pydantic_settings",
    "pytest",
    "redis",
    "sqlalchemy",
    "starlette",
    "structlog",
    "tests",
    "uvicorn",
}

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,39}$")

# (predicate over the answers, sentence shown when it holds). Components add their own
# rules here, e.g. a broker choice that needs the queue component switched on.
INCOMPATIBLE: list[tuple[bool, str]] = []


def slug_problem(slug: str) -> str | None:
    if not SLUG_PATTERN.match(slug):
        return (
            f"project_slug {slug!r} is not a valid package name: use 2-40 characters, "
            "lowercase letters, digits and underscores, starting with a letter "
            "(for example 'acme_shop')."
        )
    if keyword.iskeyword(slug):
        return (
            f"project_slug {slug!r} is a Python keyword; pick another name, such as '{slug}_api'."
        )
    if slug in sys.stdlib_module_names:
        return (
            f"project_slug {slug!r} is the name of a standard-library module and would "
            f"shadow it; pick another name, such as '{slug}_service'."
        )
    if slug in RESERVED_NAMES:
        return (
            f"project_slug {slug!r} clashes with a package the project depends on or a "
            f"folder it ships; pick another name, such as '{slug}_service'."
        )
    return None


def main() -> int:
    problems = [p for p in [slug_problem(SLUG)] if p]
    problems += [sentence for holds, sentence in INCOMPATIBLE if holds]
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
