"""A throwaway Varnish running the project's own VCL (deploy/varnish/default.vcl).

The backend.vcl is rendered to point at whatever origin the test names, exactly as
devstack/topology.py renders it for the gateway. Varnish binds 127.0.0.1 on a free port,
runs in the foreground (``-F``) and is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.servers import free_port, stop_process

VCL_DIR = Path(__file__).parents[1] / "deploy" / "varnish"
HAVE_VARNISH = shutil.which("varnishd") is not None
# Fails (never skips) where Varnish is missing: the message says what to install.
needs_varnish = pytest.mark.usefixtures("varnish_installed")


@dataclass
class Edge:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_process(self.process, timeout=15)


def start_edge(directory: Path, origin_port: int) -> Edge:
    varnishd = shutil.which("varnishd")
    assert varnishd, "varnishd is not installed"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "backend.vcl").write_text(
        "backend gateway {\n"
        '    .host = "127.0.0.1";\n'
        f'    .port = "{origin_port}";\n'
        "    .connect_timeout = 2s;\n"
        "    .first_byte_timeout = 30s;\n"
        "}\n"
    )
    port = free_port()
    log = directory / "varnishd.log"
    command = [
        varnishd,
        "-F",
        # No privilege separation: the tests may run as root or not, varnishd does as they do.
        "-j",
        "none",
        "-T",
        "none",
        "-n",
        str(directory / "work"),
        "-a",
        f"127.0.0.1:{port}",
        "-p",
        f"vcl_path={directory}:{VCL_DIR}",
        "-f",
        "default.vcl",
        "-s",
        "malloc,32m",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"varnishd exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return Edge(f"http://127.0.0.1:{port}", port, process, log)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("varnishd did not listen within 30 seconds")


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append((await reader.readexactly(size + 2))[:-2])
            if size == 0:
                break
        body = b"".join(chunks)
    elif int(headers.get("content-length", "0")):
        body = await reader.readexactly(int(headers["content-length"]))
    return Reply(status, headers, body)


async def fetch_many(
    port: int,
    requests: list[tuple[str, dict[str, str]]],
    *,
    connections: int = 50,
) -> list[Reply]:
    """GET each ``(path, headers)`` on 127.0.0.1:``port`` over ``connections`` keep-alive
    connections, as fast as they answer; the replies come back in request order.

    A hand-rolled client because httpx spends more CPU per request than the edge does, and the
    proofs need thousands of requests with every body kept.
    """
    # As browsers and httpx send it: the edge hashes objects by URL and Host.
    host = f"127.0.0.1:{port}"
    replies: list[Reply | None] = [None] * len(requests)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(requests)):
        queue.put_nowait(index)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                index = queue.get_nowait()
                path, headers = requests[index]
                extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
                replies[index] = await asyncio.wait_for(_read_reply(reader), 30)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return [reply for reply in replies if reply is not None]
