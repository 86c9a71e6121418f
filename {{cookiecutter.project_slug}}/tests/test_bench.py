"""``make bench`` in a fresh bake, nothing set: the benchmarks start throwaway servers, as
``make dev`` and ``make test`` do, instead of stopping with "set DATABASE_URL"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.servers import find_postgres_binary

pytestmark = pytest.mark.load

PROJECT_DIR = Path(__file__).parents[1]


@pytest.mark.skipif(
    find_postgres_binary("initdb") is None, reason="PostgreSQL server binaries not installed"
)
def test_the_hot_query_benchmark_runs_with_nothing_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    output = tmp_path / "orders_hot_query.json"
    # A tiny volume: this proves the path, not the figure.
    command = [sys.executable, "-m", "bench.orders_hot_query", "--rows", "2000", "--users", "20"]
    command += ["--products", "20", "--runs", "20", "--unindexed-runs", "2", "--duration", "1"]
    command += ["--connections", "2", "--output", str(output)]
    result = subprocess.run(
        command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert figures["rows"] == 2000
    assert figures["indexed_runs"] == 20


@pytest.mark.skipif(
    find_postgres_binary("initdb") is None, reason="PostgreSQL server binaries not installed"
)
def test_the_hot_path_benchmark_runs_with_nothing_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    output = tmp_path / "hot_path.json"
    # A tiny volume and one short round: this proves the path, not the figure.
    command = [sys.executable, "-m", "bench.hot_path", "--orders", "2000", "--users", "20"]
    command += ["--products", "20", "--rounds", "1", "--duration", "0.5", "--connections", "2"]
    command += ["--output", str(output)]
    result = subprocess.run(
        command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(output.read_text())
    targets = figures["targets"]
    assert set(targets) == {
        "bare_asgi",
        "healthz",
        "catalog",
        "orders_hit",
        "orders_cold",
        "catalog_traced",
        "orders_cold_traced",
    }
    for name, target in targets.items():
        assert target["requests"] > 0, name
        assert target["errors"] == 0, name
        assert target["api_cpu_ms_per_request"] > 0, name
    assert targets["orders_cold"]["cache_miss_share"] > 0
    assert targets["orders_cold_traced"]["cache_miss_share"] > 0
    # The traced API exported its spans: the traced figures measure tracing, not a no-op.
    traced = targets["catalog_traced"]["requests"] + targets["orders_cold_traced"]["requests"]
    assert figures["spans_exported"] >= traced


@pytest.mark.skipif(
    find_postgres_binary("initdb") is None, reason="PostgreSQL server binaries not installed"
)
def test_the_locust_crowd_runs_with_nothing_set_and_fails_no_request(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    output = tmp_path / "locust.json"
    # A small crowd for a few seconds: this proves the scenario and the path, not the figure.
    command = [sys.executable, "-m", "bench.locust_run", "--users", "20", "--spawn-rate", "20"]
    command += ["--duration", "8", "--accounts", "50", "--orders", "200", "--products", "20"]
    command += ["--output", str(output)]
    result = subprocess.run(
        command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert figures["locust_exit_code"] == 0, figures
    assert figures["requests"] > 0
    assert figures["failures"] == 0, figures["requests_by_name"]
    # Every step of the scenario ran: browse, list, order, report.
    assert {"GET /products", "GET /orders", "POST /orders", "POST /reports"} <= set(
        figures["requests_by_name"]
    ), figures["requests_by_name"]
    assert figures["api_cpu_ms_per_request"] > 0


def test_make_bench_runs_locust_in_a_process_of_its_own() -> None:
    """Locust monkey-patches its whole process with gevent: imported by ``make bench`` after the
    other benchmarks had imported ssl, it stopped the run with a RecursionError."""
    source = (PROJECT_DIR / "bench" / "__main__.py").read_text()
    imports = source.split("from .services import services")[0]
    # What `make bench` imports, without running it (the runs need minutes and servers).
    probe = imports.replace("from . import", "from bench import") + (
        "\nimport sys\nassert 'locust' not in sys.modules, 'locust imported in-process'\n"
        "import ssl\nssl.create_default_context()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"-m", "bench.locust_run"' in source
