"""A heartbeat file for the worker and beat processes: what their container health checks read.

``{{ cookiecutter.project_slug }} healthcheck worker|beat`` (compose's healthcheck, the Kubernetes
liveness probe) passes while the file is fresh. The worker starts beating once it is connected
and ready; beat as soon as it starts, so a standby beat waiting for the RedBeat lock is healthy
(waiting is its job). A process that hangs stops beating, and is restarted.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

HEARTBEAT_EVERY = 5.0
HEARTBEAT_STALE_AFTER = 30.0


def heartbeat_file(role: str) -> Path:
    # The temp dir is writable in every runtime, a read-only container root included (an
    # emptyDir is mounted there in Kubernetes).
    return Path(tempfile.gettempdir()) / f"{{ cookiecutter.project_slug }}-{role}.heartbeat"


def heartbeat_is_fresh(role: str) -> bool:
    try:
        age = time.time() - heartbeat_file(role).stat().st_mtime
    except OSError:
        return False
    return age < HEARTBEAT_STALE_AFTER


class Heartbeat:
    """Touches the role's heartbeat file every few seconds from a daemon thread."""

    def __init__(self, role: str) -> None:
        self.path = heartbeat_file(role)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{role}-heartbeat", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.path.touch()
            self._stop.wait(HEARTBEAT_EVERY)
