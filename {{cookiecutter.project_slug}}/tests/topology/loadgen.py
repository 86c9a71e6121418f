"""Continuous load for the topology proofs: N keep-alive clients, every outcome counted.

Why not bench/loadgen.py: that one measures speed and stops a client at its first broken
connection. A proof needs the opposite: every request's fate recorded (status, or the
connection error it died of), and a client that reconnects and carries on, as a real client
would, so one failure cannot hide the ones after it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    started: float = 0.0  # time.monotonic() when the load began
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    # (seconds since start, status or 0 for a connection error) for each failure
    failures_at: list[tuple[float, int]] = field(default_factory=list)
    # time.monotonic() of every 2xx
    ok_at: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def failed(self) -> int:
        """What a client would call a failure: a 5xx, or no response at all."""
        server_errors = sum(n for status, n in self.statuses.items() if status >= 500)
        return server_errors + sum(self.errors.values())

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    def ok_after(self, moment: float) -> int:
        return sum(1 for at in self.ok_at if at > moment)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection" and value == b"close":
            close = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


async def run_load(
    port: int,
    path: str,
    *,
    seconds: float,
    connections: int = 30,
    headers: dict[str, str] | None = None,
    reply_timeout: float = 10.0,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """GET ``path`` on 127.0.0.1:``port`` from ``connections`` clients for ``seconds``, or
    until ``stop`` is set."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()
    started = time.monotonic()
    result = LoadResult(started=started)
    deadline = started + seconds

    async def client() -> None:
        writer: asyncio.StreamWriter | None = None
        reader: asyncio.StreamReader | None = None
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            try:
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                status, close = await asyncio.wait_for(_read_response(reader), reply_timeout)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as error:
                result.errors[type(error).__name__] += 1
                result.failures_at.append((time.monotonic() - started, 0))
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            result.statuses[status] += 1
            if 200 <= status < 300:
                result.ok_at.append(time.monotonic())
            if status >= 500:
                result.failures_at.append((time.monotonic() - started, status))
            if close:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return result
