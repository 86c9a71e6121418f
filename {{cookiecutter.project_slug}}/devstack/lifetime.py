"""The launcher owns what it starts: children die with it, and a stack it left is found again.

Two guarantees, for ``make dev`` and the tests that start it:

- **children die with their launcher.** Every process the launcher starts asks the kernel to
  signal it when its parent dies (``PR_SET_PDEATHSIG`` through ``prctl``, Linux): honcho's
  per-process runner gets SIGKILL when the launcher dies, and the server under it gets SIGTERM
  when its runner dies, so a ``kill -9`` of the launcher takes the whole tree down, servers
  shutting down cleanly. On other systems the call is a no-op and the PID file below is the
  safety net.
- **a stack left behind is found from its PID file** (``DEVSTACK_DIR/stack.json``): it names
  the launcher and every process and server with its start time, written as soon as each one
  starts. The next launch (or ``python -m devstack stop``) refuses while that launcher still
  runs, and stops what a dead launcher left (the throwaway Postgres, a daemon, is the usual
  one) before anything is started or deleted. A PID whose start time differs is another process
  that reused the number, and is left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

logger = structlog.get_logger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
STOP_SECONDS = 30.0


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only).

    Call it in the child (a ``preexec_fn``, or first thing in a forked runner). The parent is
    the *thread* that forked: fork from the main thread.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux); None when unknown or gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])  # field 22 of proc(5), counted after "pid (comm)"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead, only not yet reaped by its parent.
    with contextlib.suppress(OSError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


@dataclass(frozen=True)
class Owned:
    """A process the stack started, as the PID file records it."""

    name: str
    pid: int
    started: int | None  # start_time() when it was recorded
    # Signal that stops it cleanly: SIGTERM, or SIGINT for Postgres (a fast shutdown).
    stop_signal: int = int(signal.SIGTERM)
    # Procfile processes lead their own process group (honcho starts a new session): the group
    # is signalled, so a worker's pool or Varnish's cache process go too.
    group: bool = False

    @classmethod
    def now(
        cls, name: str, pid: int, stop_signal: int = int(signal.SIGTERM), *, group: bool = False
    ) -> Owned:
        return cls(name, pid, start_time(pid), stop_signal, group)

    def is_running(self) -> bool:
        """Alive and the same process: a reused PID has another start time."""
        if not alive(self.pid):
            return False
        return self.started is None or start_time(self.pid) in (None, self.started)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.group and os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)

    def as_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "started": self.started,
            "stop_signal": self.stop_signal,
            "group": self.group,
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> Owned:
        stop_signal = int(data.get("stop_signal", signal.SIGTERM))
        started, group = data.get("started"), bool(data.get("group"))
        return cls(name, int(data["pid"]), started, stop_signal, group)


class StackRunning(RuntimeError):
    """Another launcher still runs this stack; the message says how to stop it."""


def read_state(state_file: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    return state


def recorded(state: dict[str, Any]) -> tuple[Owned | None, list[Owned], list[Owned]]:
    """The launcher, its Procfile processes and its servers, from a PID file."""
    launcher = state.get("launcher")
    owner = Owned.from_json("launcher", launcher) if isinstance(launcher, dict) else None
    if owner is None and "launcher_pid" in state:
        owner = Owned("launcher", int(state["launcher_pid"]), None)
    processes = [Owned.from_json(n, d) for n, d in state.get("processes", {}).items()]
    servers = [Owned.from_json(n, d) for n, d in state.get("servers", {}).items()]
    return owner, processes, servers


def stop_all(owned: Iterable[Owned], timeout: float = STOP_SECONDS) -> list[str]:
    """Stop each running one with its own signal, SIGKILL what outlives ``timeout``."""
    running = [process for process in owned if process.is_running()]
    for process in running:
        process.signal(process.stop_signal)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.is_running() for p in running):
        time.sleep(0.1)
    for process in running:
        if process.is_running():
            process.signal(signal.SIGKILL)
    return [process.name for process in running]


def clear_stale_stack(state_file: Path) -> list[str]:
    """Refuse while the recorded launcher runs; else stop what it left and drop the file.

    Returns the names of the processes that had to be stopped (empty: nothing was left).
    """
    state = read_state(state_file)
    if state is None:
        state_file.unlink(missing_ok=True)  # unreadable: it cannot name anything to stop
        return []
    owner, processes, servers = recorded(state)
    if owner is not None and owner.pid != os.getpid() and owner.is_running():
        raise StackRunning(
            f"A stack is already running from {state_file.parent} (launcher PID {owner.pid}). "
            f"Stop it with Ctrl-C where it runs, or `kill {owner.pid}`, then start again."
        )
    # Clients first, then the servers they use.
    stopped = stop_all(processes) + stop_all(servers)
    if stopped:
        logger.warning("devstack.stale_stack_stopped", file=str(state_file), stopped=stopped)
    state_file.unlink(missing_ok=True)
    return stopped


def stop_stack(state_file: Path, timeout: float = 60.0) -> str:
    """The ``stop`` command: stop the stack a PID file names, running or stale; say what it did."""
    state = read_state(state_file)
    if state is None:
        return f"No stack recorded in {state_file}: nothing to stop."
    owner, _, _ = recorded(state)
    if owner is not None and owner.is_running():
        owner.signal(signal.SIGTERM)  # as Ctrl-C: the launcher stops everything it started
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and owner.is_running():
            time.sleep(0.1)
        if owner.is_running():
            owner.signal(signal.SIGKILL)
    stopped = clear_stale_stack(state_file)
    if owner is not None and not stopped:
        return f"Stopped the stack of launcher PID {owner.pid}."
    return f"Stopped what a dead launcher left running: {', '.join(stopped) or 'nothing'}."
