"""A throwaway Prometheus (Debian's ``prometheus`` package) scraping given targets.

For the observability proofs: loopback on a free port, its own TSDB in a temporary directory,
stopped by PID when the context exits. :func:`short_windows` rewrites deploy/prometheus's
rules with seconds for hours, so the same expressions fire within a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.servers import free_port, stop_process

# The production windows and what the proofs use instead (scrape and evaluate every second).
SHORT_WINDOWS = {"5m": "4s", "15m": "8s", "30m": "8s", "1h": "12s", "6h": "16s", "3d": "20s"}


def prometheus_binary() -> str | None:
    """``PROMETHEUS_BIN``, else ``prometheus`` on the PATH."""
    return os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")


def short_windows(rules: Mapping[str, Any]) -> dict[str, Any]:
    """The same rules with every range and ``for`` shortened (names keep their suffixes)."""
    pattern = re.compile(r"\[(" + "|".join(SHORT_WINDOWS) + r")\]")
    groups = []
    for group in rules["groups"]:
        shortened = []
        for rule in group["rules"]:
            rule = dict(rule)
            rule["expr"] = pattern.sub(lambda m: f"[{SHORT_WINDOWS[m.group(1)]}]", rule["expr"])
            if "for" in rule:
                rule["for"] = "2s"
            shortened.append(rule)
        groups.append({**group, "interval": "1s", "rules": shortened})
    return {"groups": groups}


@dataclass(frozen=True)
class PrometheusServer:
    url: str

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as reply:  # noqa: S310  # loopback
            return json.loads(reply.read())

    def firing(self) -> set[str]:
        alerts = self.get("/api/v1/alerts")["data"]["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


@contextlib.contextmanager
def run_prometheus(
    targets: Mapping[str, Sequence[str]],
    rules: Sequence[Mapping[str, Any]],
    *,
    interval: str = "1s",
    deadline: float = 60.0,
) -> Iterator[PrometheusServer]:
    """Prometheus scraping ``targets`` (job name -> host:port list) with ``rules`` loaded."""
    binary = prometheus_binary()
    if binary is None:
        raise RuntimeError("prometheus is not installed (`apt-get install prometheus`)")
    with tempfile.TemporaryDirectory(prefix="prometheus-") as tmp:
        rule_files = []
        for index, content in enumerate(rules):
            path = Path(tmp) / f"rules-{index}.yml"
            path.write_text(json.dumps(content))  # JSON is YAML: no YAML library needed
            rule_files.append(str(path))
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": rule_files,
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(hosts)}]}
                for job, hosts in targets.items()
            ],
        }
        (Path(tmp) / "prometheus.yml").write_text(json.dumps(config))
        port = free_port()
        log = (Path(tmp) / "prometheus.log").open("wb")
        process = subprocess.Popen(  # our own binary, fixed arguments
            [
                binary,
                f"--config.file={tmp}/prometheus.yml",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = PrometheusServer(f"http://127.0.0.1:{port}")
        try:
            stop_at = time.monotonic() + deadline
            while True:
                if process.poll() is not None:
                    raise RuntimeError((Path(tmp) / "prometheus.log").read_text()[-3000:])
                with contextlib.suppress(OSError):
                    if server.get("/api/v1/status/runtimeinfo")["status"] == "success":
                        break
                if time.monotonic() > stop_at:
                    raise RuntimeError("Prometheus did not become ready")
                time.sleep(0.2)
            yield server
        finally:
            stop_process(process)
            log.close()
