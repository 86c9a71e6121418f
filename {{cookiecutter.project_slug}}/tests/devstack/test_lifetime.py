"""The PID file: a stack left behind by a dead launcher is stopped, a running one is refused.

Real processes (``sleep``) stand in for the stack's; nothing here starts a server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.lifetime import (
    Owned,
    StackRunning,
    alive,
    clear_stale_stack,
    start_time,
)
from devstack.topology import STATE_FILE, write_state_file

from tests.devstack.cli import run_cli


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def sleeper(started: list[subprocess.Popen[bytes]], *, group: bool) -> int:
    process = subprocess.Popen(["sleep", "600"], start_new_session=group)
    started.append(process)
    return process.pid


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def dies(process: subprocess.Popen[bytes], timeout: float = 35) -> bool:
    """Polled: the process exits (and is reaped) before the deadline."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return process.poll() is not None


def write_stale(path: Path, launcher: int, processes: dict[str, int], servers: list[Owned]) -> None:
    write_state_file(path, launcher=os.getpid(), pids=processes, servers=servers)
    state = json.loads(path.read_text())
    state["launcher_pid"] = launcher
    state["launcher"] = {"pid": launcher, "started": start_time(launcher)}
    path.write_text(json.dumps(state))


def test_what_a_dead_launcher_left_is_stopped_and_the_pid_file_dropped(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    state_file = tmp_path / STATE_FILE
    worker = sleeper(sleepers, group=True)
    postgres = sleeper(sleepers, group=False)
    write_stale(
        state_file,
        dead_pid(),
        {"worker.1": worker},
        [Owned.now("postgres", postgres, int(signal.SIGINT))],
    )

    stopped = clear_stale_stack(state_file)

    assert stopped == ["worker.1", "postgres"]
    assert all(dies(process) for process in sleepers)
    assert not state_file.exists()


def test_a_running_launcher_is_refused_and_nothing_is_touched(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    state_file = tmp_path / STATE_FILE
    launcher = sleeper(sleepers, group=False)
    worker = sleeper(sleepers, group=True)
    write_stale(state_file, launcher, {"worker.1": worker}, [])

    with pytest.raises(StackRunning, match=rf"launcher PID {launcher}\). Stop it with Ctrl-C"):
        clear_stale_stack(state_file)

    assert alive(launcher)
    assert alive(worker)
    assert state_file.exists()


def test_a_pid_reused_by_another_process_is_left_alone(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    state_file = tmp_path / STATE_FILE
    stranger = sleeper(sleepers, group=True)
    # The PID file says this PID started at another time: it is somebody else's process now.
    reused = Owned("worker.1", stranger, (start_time(stranger) or 0) + 1, group=True)
    write_stale(state_file, dead_pid(), {}, [reused])

    assert clear_stale_stack(state_file) == []
    assert alive(stranger)


def test_dev_refuses_to_start_over_a_running_stack_in_a_plain_sentence(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    launcher = sleeper(sleepers, group=False)
    write_stale(tmp_path / STATE_FILE, launcher, {}, [])

    result = run_cli("dev", tmp_path)

    assert result.returncode == 1
    assert f"A stack is already running from {tmp_path} (launcher PID {launcher})" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / STATE_FILE).exists()  # nothing deleted


def test_the_stop_command_stops_a_stack_left_by_kill_9(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    worker = sleeper(sleepers, group=True)
    write_stale(tmp_path / STATE_FILE, dead_pid(), {"worker.1": worker}, [])

    result = run_cli("stop", tmp_path)

    assert result.returncode == 0, result.stderr
    assert "worker.1" in result.stdout
    assert dies(sleepers[0])
    assert not (tmp_path / STATE_FILE).exists()
