"""Stand-ins for the Celery worker and beat until the queue lands.

Every process of the topology already has its slot (Procfile, compose, Kubernetes), so the queue
only has to replace what runs in it. Until then ``worker`` and ``beat`` start, log that they are
placeholders, keep a heartbeat file fresh for their health check and exit 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

import structlog

HEARTBEAT_EVERY = 5.0
HEARTBEAT_STALE_AFTER = 30.0

log = structlog.get_logger(__name__)


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


def idle(role: str) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info(f"{role}.stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(f"{role}.placeholder", detail="no queue yet; idling until stopped")
    beat = heartbeat_file(role)
    while not stop.is_set():
        beat.touch()
        stop.wait(HEARTBEAT_EVERY)
    beat.unlink(missing_ok=True)
    return 0
