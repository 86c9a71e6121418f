"""Load generation for the benchmarks: wrk when installed, else a small asyncio client.

wrk (C, multi-threaded) costs the least CPU per request, so the server under test gets most of
the machine. Without it, :func:`run_asyncio_load` is the fallback: hand-written because httpx
spends more CPU per request than the server under test; it pre-encodes one request, keeps
``connections`` sockets open and reads responses by Content-Length. Either way the client
shares the machine with the server: compare figures from the same run (ratios), not across
machines. :func:`run_load` picks the best available.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def run_asyncio_load(
    host: str,
    port: int,
    path: str,
    *,
    connections: int = 32,
    duration: float = 5.0,
    headers: dict[str, str] | None = None,
    rotate: Sequence[dict[str, str]] = (),
) -> LoadResult:
    """``rotate``: header sets taken in turn, one per request across all connections (e.g. one
    token per user); else every request carries ``headers``."""

    def encode(fields: dict[str, str]) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()

    requests = [encode(fields) for fields in rotate] or [encode(headers or {})]
    turn = itertools.cycle(requests)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(next(turn))
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - started)
                if status >= 500:
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    p99 = ordered[int(len(ordered) * 0.99) - 1] if ordered else 0.0
    return LoadResult(
        requests=len(latencies),
        errors=errors,
        seconds=elapsed,
        p50_ms=round(statistics.median(ordered) * 1000, 3) if ordered else 0.0,
        p99_ms=round(p99 * 1000, 3),
    )


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(value: str) -> float:
    # wrk switches to minutes past 60 s; a latency it could not measure is reported as 0.
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    return float(match.group(1)) * _WRK_UNITS[match.group(2)] if match else 0.0


def run_wrk(
    host: str,
    port: int,
    path: str,
    *,
    connections: int = 32,
    duration: float = 5.0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    wrk = shutil.which("wrk")
    assert wrk, "wrk is not installed"
    command = [wrk, "-t2", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run(  # noqa: S603
        [*command, f"http://{host}:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", output).group(1))  # type: ignore[union-attr]
    seconds = duration
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return LoadResult(
        requests=requests,
        errors=errors,
        seconds=requests / rps if rps else seconds,
        p50_ms=_wrk_ms(re.search(r"50%\s+(\S+)", output).group(1)),  # type: ignore[union-attr]
        p99_ms=_wrk_ms(re.search(r"99%\s+(\S+)", output).group(1)),  # type: ignore[union-attr]
    )


async def run_load(
    host: str,
    port: int,
    path: str,
    *,
    connections: int = 32,
    duration: float = 5.0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """wrk when it is installed (cheapest client), else the asyncio client."""
    if shutil.which("wrk"):
        return await asyncio.to_thread(
            run_wrk, host, port, path, connections=connections, duration=duration, headers=headers
        )
    return await run_asyncio_load(
        host, port, path, connections=connections, duration=duration, headers=headers
    )


def client_name() -> str:
    return "wrk" if shutil.which("wrk") else "asyncio"
