"""Postgres and Redis for the benchmarks, found the way ``make dev`` and ``make test`` find them:
``DATABASE_URL`` / ``REDIS_URL`` from the environment, else throwaway servers from local
binaries (stopped by PID when the benchmark ends), else containers, else a message naming what
to install."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from devstack.servers import ServerUnavailable, provide_services


@contextlib.contextmanager
def services() -> Iterator[dict[str, str]]:
    """Put DATABASE_URL and REDIS_URL in the environment for the block; yield them."""
    with tempfile.TemporaryDirectory(prefix="{{ cookiecutter.project_slug }}-bench-") as directory:
        try:
            urls, started = provide_services(Path(directory), os.environ)
        except ServerUnavailable as exc:
            raise SystemExit(f"No Postgres/Redis for the benchmarks: {exc}") from exc
        before = {name: os.environ.get(name) for name in urls}
        os.environ.update(urls)
        try:
            yield urls
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            for server in reversed(started):
                server.stop()
