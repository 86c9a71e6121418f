"""The dev launcher owns its processes, on the real stack (``{{ cookiecutter.project_slug }} dev``).

- a process that crashes (kill -9 of the scheduler, of the gateway itself) is started again
  while everything else keeps serving: the stack never stops by itself;
- a kill -9 of the launcher takes every process with it: nothing is left holding a port, and the
  next launch (the next test's stack, on the same ports and directory) starts cleanly over the
  PID file it left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx
import pytest

from devstack.topology import LocalStack, pid_alive

from tests.topology.conftest import listens, port_of, restarted

pytestmark = [pytest.mark.topology, pytest.mark.xdist_group("topology")]


async def test_crashed_processes_are_restarted_and_the_stack_keeps_serving(
    fresh_stack: LocalStack, results: dict[str, Any]
) -> None:
    stack = fresh_stack
    front = stack.urls.get("edge", stack.urls["gateway"])
    before = dict(stack.pids)
    victims = ["beat.1", "worker.1", "gateway.1"]
    killed = time.monotonic()
    for name in victims:
        os.kill(before[name], signal.SIGKILL)

    back = {name: await restarted(stack, name, before[name]) for name in victims}
    seconds = round(time.monotonic() - killed, 2)

    assert all(back[name] != before[name] for name in victims)
    assert stack.process.poll() is None  # the launcher never stopped
    # Everything else is the same process it was.
    untouched = {name: pid for name, pid in stack.pids.items() if name not in victims}
    assert untouched == {name: before[name] for name in untouched}
    assert all(pid_alive(pid) for pid in stack.pids.values())
    assert stack.state["restarts"] == dict.fromkeys(victims, 1)
    # The new gateway serves the whole chain again.
    async with httpx.AsyncClient(timeout=10) as client:
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline and status != 200:
            try:
                status = (await client.get(f"{front}/readyz")).status_code
            except httpx.TransportError:
                status = 0
        assert status == 200
    results["launcher_restarts"] = {"killed": victims, "all_back_seconds": seconds}


async def test_kill_9_of_the_launcher_leaves_no_process_behind(
    fresh_stack: LocalStack, results: dict[str, Any]
) -> None:
    stack = fresh_stack
    pids = dict(stack.pids)
    ports = [port_of(url) for url in stack.urls.values()]

    stack.process.kill()  # SIGKILL: the launcher runs no cleanup at all
    stack.process.wait(10)
    killed = time.monotonic()

    deadline = killed + 60
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids.values()):
        await asyncio.sleep(0.1)
    survivors = {name: pid for name, pid in pids.items() if pid_alive(pid)}
    assert survivors == {}, stack.log()[-2000:]
    listening = [port for port in ports if listens(port)]
    assert listening == []
    results["launcher_kill_9"] = {
        "processes": len(pids),
        "all_gone_seconds": round(time.monotonic() - killed, 2),
    }
