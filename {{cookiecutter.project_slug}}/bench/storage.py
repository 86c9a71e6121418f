"""Storage benchmark: direct-to-S3 uploads (presigned POST) vs uploads streamed through the API.

Same files, same run, the same real SeaweedFS. The API here is a bench-only process with two
endpoints: ``/sign`` answers a presigned POST (what ``POST /uploads`` does, minus the row) and
``/stream`` takes the whole body and puts it to S3 (the design the project refuses; it exists only
in this file). Reports MB/s, uploads/s and the API process's CPU seconds per uploaded MB, into
``bench/results/storage.json``. Run with ``python -m bench.storage``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request

from devstack.api_process import uvicorn_command, wait_until_healthy
from devstack.seaweedfs import S3Server, run_seaweedfs
from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.patterns.storage import ObjectStorage

from .scratch import cpu_seconds

PROJECT_DIR = Path(__file__).resolve().parents[1]
RESULTS = PROJECT_DIR / "bench" / "results" / "storage.json"
MiB = 1024 * 1024


def create_bench_app() -> FastAPI:
    """The bench-only API (uvicorn factory); S3 settings come from the environment."""
    storage = ObjectStorage(
        bucket=os.environ["S3_BUCKET"],
        endpoint_url=os.environ["S3_ENDPOINT_URL"],
        region="us-east-1",
        access_key_id=os.environ["S3_ACCESS_KEY_ID"],
        secret_access_key=os.environ["S3_SECRET_ACCESS_KEY"],
    )
    app = FastAPI()

    @app.post("/sign")
    async def sign(body: dict[str, int]) -> dict[str, Any]:
        post = storage.presign_post(
            f"bench/direct/{uuid.uuid4()}",
            content_type="application/octet-stream",
            max_size=body["size"],
            expires_in=600,
        )
        return {"url": post.url, "fields": post.fields}

    @app.post("/stream")
    async def stream(request: Request) -> dict[str, str]:
        data = await request.body()
        etag = await storage.put_bytes(
            f"bench/streamed/{uuid.uuid4()}", data, content_type="application/octet-stream"
        )
        return {"etag": etag}

    return app


async def _run(api: str, mode: str, files: int, size: int, concurrency: int) -> float:
    payload = os.urandom(size)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120) as client:

        async def one() -> None:
            async with gate:
                if mode == "direct":
                    ticket = (await client.post(f"{api}/sign", json={"size": size})).json()
                    reply = await client.post(
                        ticket["url"],
                        data=ticket["fields"],
                        files={"file": ("f", payload, "application/octet-stream")},
                    )
                    assert reply.status_code == 204, reply.text
                else:
                    reply = await client.post(f"{api}/stream", content=payload)
                    assert reply.status_code == 200, reply.text

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(files)))
        return time.perf_counter() - start


def measure(s3: S3Server, files: int, size: int, concurrency: int) -> dict[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "S3_BUCKET": s3.bucket,
        "S3_ENDPOINT_URL": s3.endpoint,
        "S3_ACCESS_KEY_ID": s3.access_key,
        "S3_SECRET_ACCESS_KEY": s3.secret_key,
    }
    server = subprocess.Popen(  # noqa: S603  # our own interpreter, fixed arguments
        uvicorn_command(port, app="bench.storage:create_bench_app"), cwd=PROJECT_DIR, env=env
    )
    api = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(server, api, health_path="/docs")
        results: dict[str, Any] = {}
        for mode in ("direct", "streamed"):
            cpu_before = cpu_seconds(server.pid)
            seconds = asyncio.run(_run(api, mode, files, size, concurrency))
            cpu = cpu_seconds(server.pid) - cpu_before
            megabytes = files * size / MiB
            results[mode] = {
                "seconds": round(seconds, 3),
                "mb_per_s": round(megabytes / seconds, 1),
                "uploads_per_s": round(files / seconds, 1),
                "api_cpu_s_per_mb": round(cpu / megabytes, 5),
                "api_cpu_ms_per_upload": round(cpu * 1000 / files, 3),
            }
        return results
    finally:
        server.terminate()
        server.wait(10)


def main(files: int = 50, size: int = 4 * MiB, concurrency: int = 8) -> dict[str, Any]:
    with run_seaweedfs() as s3:
        modes = measure(s3, files, size, concurrency)
    direct, streamed = modes["direct"], modes["streamed"]
    results = {
        "files": files,
        "file_bytes": size,
        "concurrency": concurrency,
        **modes,
        "api_cpu_streamed_vs_direct": round(
            streamed["api_cpu_s_per_mb"] / max(direct["api_cpu_s_per_mb"], 1e-9), 1
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"storage: direct {direct['mb_per_s']} MB/s {direct['uploads_per_s']} uploads/s "
        f"{direct['api_cpu_s_per_mb']} API CPU s/MB; streamed {streamed['mb_per_s']} MB/s "
        f"{streamed['uploads_per_s']} uploads/s {streamed['api_cpu_s_per_mb']} API CPU s/MB; "
        f"streamed costs the API x{results['api_cpu_streamed_vs_direct']} CPU per MB"
    )
    return results


if __name__ == "__main__":
    main()
