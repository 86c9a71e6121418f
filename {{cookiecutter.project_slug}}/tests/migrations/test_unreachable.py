"""`migrate` (the CLI, the compose/Kubernetes migrate job, `make dev`) against a database it
cannot use: one plain sentence naming it and what the server said, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from sqlalchemy import make_url


def migrate(database_url: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "{{ cookiecutter.project_slug }}.cli", "migrate"]
    return subprocess.run(
        command,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_database_that_does_not_exist_is_named_in_one_sentence() -> None:
    missing = f"no_such_db_{uuid.uuid4().hex[:8]}"
    url = make_url(os.environ["DATABASE_URL"]).set(database=missing)

    result = migrate(url.render_as_string(hide_password=False))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"migrate: cannot migrate {url.render_as_string()}" in result.stderr
    assert f'database "{missing}" does not exist' in result.stderr


def test_no_server_listening_is_named_in_one_sentence() -> None:
    url = make_url(os.environ["DATABASE_URL"]).set(host="127.0.0.1", port=1)

    result = migrate(url.render_as_string(hide_password=False))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot migrate" in result.stderr
    assert "127.0.0.1" in result.stderr
