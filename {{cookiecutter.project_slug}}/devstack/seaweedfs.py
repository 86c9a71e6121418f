"""A throwaway SeaweedFS (``weed mini``) with credentials, so SigV4 and POST policies are real.

For the proofs (tests/uploads) and the storage benchmark: free ports on loopback, its own data
directory, stopped by PID when the context exits.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

from devstack.servers import stop_process
from devstack.settings import StackSettings

ACCESS_KEY = "proof"
SECRET_KEY = "proof-secret-key"  # noqa: S105  # throwaway test server only
BUCKET = "proofs"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_base() -> tuple[int, dict[str, int]]:
    for _ in range(200):
        base = random.randrange(20_000, 40_000)  # noqa: S311  # port choice, not crypto
        ports = StackSettings(s3_internal_ports_from=base).seaweedfs_ports()
        s3_port = base + 8
        if all(_bindable(port) for port in [*ports.values(), s3_port]):
            return s3_port, ports
    raise RuntimeError("no free port range for SeaweedFS")


def weed_binary() -> str | None:
    return shutil.which(
        "weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )


@contextlib.contextmanager
def run_seaweedfs(deadline: float = 60.0) -> Iterator[S3Server]:
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed is not installed (the `stack` dependency group)")
    with tempfile.TemporaryDirectory(prefix="weed-") as tmp:
        s3_port, ports = _free_base()
        (Path(tmp) / "data").mkdir()
        options = {
            "dir": f"{tmp}/data",
            "ip": "127.0.0.1",
            "ip.bind": "127.0.0.1",
            "s3.port": str(s3_port),
            **{name: str(port) for name, port in ports.items()},
            "bucket": BUCKET,
            "admin.ui": "false",
            "webdav": "false",
            "s3.port.iceberg": "0",
            "s3.port.lance": "0",
            "master.telemetry": "false",
        }
        (Path(tmp) / "options").write_text("".join(f"{k}={v}\n" for k, v in options.items()))
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        log = (Path(tmp) / "weed.log").open("wb")
        process = subprocess.Popen(  # our own binary, fixed arguments
            [weed, "mini", f"-options={tmp}/options"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        endpoint = f"http://127.0.0.1:{s3_port}"
        try:
            stop_at = time.monotonic() + deadline
            while True:
                if process.poll() is not None:
                    raise RuntimeError((Path(tmp) / "weed.log").read_text()[-3000:])
                url = f"{endpoint}/healthz"
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(url, timeout=1) as reply,  # noqa: S310  # loopback
                ):
                    if reply.status == 200:
                        break
                if time.monotonic() > stop_at:
                    raise RuntimeError("SeaweedFS did not become healthy")
                time.sleep(0.2)
            # Healthy comes before the -bucket option has created the bucket.
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
            )
            while True:
                try:
                    client.head_bucket(Bucket=BUCKET)
                    break
                except ClientError:
                    if time.monotonic() > stop_at:
                        raise
                    time.sleep(0.2)
            client.close()
            yield S3Server(endpoint, BUCKET, ACCESS_KEY, SECRET_KEY)
        finally:
            stop_process(process)
            log.close()
