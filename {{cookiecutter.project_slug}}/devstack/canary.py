"""Canary deploys on the local stack: a canary group behind Traefik's weighted service, and the
controller that promotes it in steps or rolls it back by itself.

What it guarantees:

- with ``CANARY_INSTANCES`` > 0, ``make dev`` starts that many more API instances (from
  ``CANARY_PORT`` on) with the stack's environment plus ``CANARY_ENV_FILE`` (another config) and
  ``CANARY_COMMAND`` (another build), behind the gateway at ``CANARY_WEIGHT`` percent;
- weights change by atomically rewriting one file (``canary.yml``) that Traefik's file provider
  watches: the gateway is never restarted, and no request is dropped by a change of weight;
- the controller compares the canary group's error ratio and p95 latency with the stable
  group's over a sliding window (``CANARY_WINDOW_SECONDS``), read from every instance's own
  ``/metrics`` (the stack runs no Prometheus; the Kubernetes overlay asks Prometheus the same
  question). A worse canary is rolled back (weight 0) at the first tick with
  ``CANARY_MIN_REQUESTS`` canary requests in the window; a healthy one moves to the next of
  ``CANARY_STEPS`` after a full window at its weight, up to 100;
- decisions are dotted log events (``canary.step``, ``canary.promoted``, ``canary.rolled_back``)
  and metrics on the controller's ``/metrics`` (127.0.0.1:``CANARY_CONTROLLER_PORT``); the
  outcome is kept in ``DEVSTACK_DIR/canary.json``, so a restarted controller keeps it.

What it needs: the rendered Traefik config of :func:`topology.render_configs`, the instances'
``http_requests_total`` and ``http_request_duration_seconds`` (patterns/metrics.py).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from dotenv import dotenv_values
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from devstack.settings import StackSettings

WEIGHTS_FILE = "canary.yml"
STATE_FILE = "canary.json"
STABLE, CANARY = "api", "api-canary"
# Requests the comparison leaves out: probes and scrapes, not users.
OPS_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# What a canary instance runs unless CANARY_COMMAND says otherwise: the Procfile's api line.
SERVE = 'exec {{ cookiecutter.project_slug }} serve --port "$PORT"'


class CanarySettings(BaseSettings):
    """The local canary and its controller, one ``CANARY_*`` variable each (.env.example)."""

    model_config = SettingsConfigDict(env_prefix="CANARY_", env_file=".env", extra="ignore")

    instances: int = Field(default=0, ge=0, le=8)
    # Percent of requests the canary gets first; then each of `steps` above it, up to 100.
    weight: int = Field(default=5, ge=1, le=100)
    steps: str = "5,25,50,100"
    env_file: Path | None = None
    command: str = SERVE
    # 0: the ports right after the stable instances (API_PORT + API_INSTANCES, ...).
    port: int = Field(default=0, ge=0, le=65535)
    controller_port: int = Field(default=8090, ge=1, le=65535)
    window_seconds: float = Field(default=60.0, gt=0)
    interval_seconds: float = Field(default=5.0, gt=0)
    # Fewer canary requests in the window than this: no verdict yet.
    min_requests: int = Field(default=50, ge=1)
    # The canary's error ratio may exceed the stable group's by this much (0.01: a point).
    max_error_increase: float = Field(default=0.01, ge=0, le=1)
    # A canary p95 over ratio x the stable p95 *and* over it by the margin is a regression.
    max_p95_ratio: float = Field(default=1.5, ge=1)
    min_p95_increase_seconds: float = Field(default=0.05, ge=0)

    @field_validator("steps")
    @classmethod
    def _steps_rise_to_100(cls, value: str) -> str:
        try:
            steps = [int(step) for step in value.split(",")]
        except ValueError:
            raise ValueError("CANARY_STEPS is a comma-separated list of percents") from None
        if steps != sorted(set(steps)) or steps[-1] != 100 or steps[0] < 1:
            raise ValueError("CANARY_STEPS must rise strictly from 1 or more to 100")
        return value

    def plan(self) -> list[int]:
        """The weights a healthy canary goes through: CANARY_WEIGHT, then the steps above it."""
        return [self.weight, *(s for s in map(int, self.steps.split(",")) if s > self.weight)]

    def ports(self, stack: StackSettings) -> list[int]:
        first = self.port or stack.api_port + stack.api_instances
        return [first + index for index in range(self.instances)]

    def named_ports(self, stack: StackSettings) -> dict[str, int]:
        if not self.instances:
            return {}
        named = {
            f"CANARY_PORT + {i}" if i else "CANARY_PORT": p for i, p in enumerate(self.ports(stack))
        }
        return named | {"CANARY_CONTROLLER_PORT": self.controller_port}


def weights_config(canary_urls: Iterable[str], weight: int) -> dict[str, Any]:
    """The file provider's ``canary.yml``: the canary group and the weighted ``api-rollout``.

    The canary's load balancer repeats the stable one's active health check and leaves out the
    passive one: a canary failing a fifth of its requests would flap in and out of rotation,
    hiding the failures the controller must see to roll it back for good.
    """
    members = []
    if weight < 100:
        members.append({"name": STABLE, "weight": 100 - weight})
    if weight > 0:
        members.append({"name": CANARY, "weight": weight})
    return {
        "http": {
            "services": {
                CANARY: {
                    "loadBalancer": {
                        "healthCheck": {"path": "/readyz", "interval": "1s", "timeout": "3s"},
                        "servers": [{"url": url} for url in canary_urls],
                    }
                },
                # healthCheck {}: a group with no instance up gets no requests at any weight.
                "api-rollout": {"weighted": {"healthCheck": {}, "services": members}},
            }
        }
    }


def write_weights(dynamic_dir: Path, canary_urls: Iterable[str], weight: int) -> None:
    import yaml

    text = "# Written by devstack/canary.py; the canary controller rewrites it.\n"
    text += yaml.safe_dump(weights_config(canary_urls, weight), sort_keys=False)
    # Written beside the directory and renamed in: Traefik never reads half a file.
    temporary = dynamic_dir.parent / f".{WEIGHTS_FILE}.tmp"
    temporary.write_text(text)
    temporary.replace(dynamic_dir / WEIGHTS_FILE)


def enable_canary(
    canary: CanarySettings, stack: StackSettings, project_dir: Path, state_dir: Path
) -> dict[str, str]:
    """Point the rendered gateway at a watched copy of deploy/traefik/dynamic plus the first
    weights; return the environment the gateway and the controller need (none without a canary)."""
    import yaml

    (state_dir / STATE_FILE).unlink(missing_ok=True)  # a new launch is a new rollout
    if not canary.instances:
        return {}
    dynamic = state_dir / "traefik" / "dynamic"
    shutil.rmtree(dynamic, ignore_errors=True)
    shutil.copytree(project_dir / "deploy" / "traefik" / "dynamic", dynamic)
    urls = [f"http://127.0.0.1:{port}" for port in canary.ports(stack)]
    write_weights(dynamic, urls, canary.plan()[0])

    static = state_dir / "traefik" / "traefik.yml"
    config = yaml.safe_load(static.read_text())
    config["providers"]["file"] = {"directory": str(dynamic), "watch": True}
    # Traefik applies a new weight at most this long after the file changes (default 2 s).
    config["providers"]["providersThrottleDuration"] = "200ms"
    header = "# Rendered by devstack/topology.py and devstack/canary.py; do not edit.\n"
    static.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return {"CANARY_UPSTREAMS": ",".join(urls)}


def canary_processes(
    canary: CanarySettings, stack: StackSettings, env: Mapping[str, str]
) -> list[tuple[str, str, dict[str, str]]]:
    """(name, command, environment) of each canary instance and of the controller."""
    if not canary.instances:
        return []
    overrides: dict[str, str] = {}
    if canary.env_file is not None:
        values = dotenv_values(canary.env_file)
        overrides = {key: value for key, value in values.items() if value is not None}
    processes = [
        (f"canary.{index}", canary.command, {**env, **overrides, "PORT": str(port)})
        for index, port in enumerate(canary.ports(stack), start=1)
    ]
    stable = ",".join(f"http://127.0.0.1:{port}" for port in stack.api_ports())
    command = f"exec {sys.executable} -m devstack.canary"
    processes.append(("canary-controller", command, {**env, "STABLE_UPSTREAMS": stable}))
    return processes


# --- the controller -----------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """One instance's request counters (or a group's, summed), user routes only."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()  # (le, cumulative count), le ascending

    def __add__(self, other: Counts) -> Counts:
        merged: dict[float, float] = dict(self.buckets)
        for le, count in other.buckets:
            merged[le] = merged.get(le, 0.0) + count
        return Counts(
            self.requests + other.requests,
            self.errors + other.errors,
            tuple(sorted(merged.items())),
        )

    def __sub__(self, earlier: Counts) -> Counts:
        """What happened since ``earlier``; a counter that went down (a restart) counts from 0."""
        if self.requests < earlier.requests:
            return self
        before = dict(earlier.buckets)
        return Counts(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            tuple((le, count - before.get(le, 0.0)) for le, count in self.buckets),
        )

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float:
        """``histogram_quantile``: linear within the bucket that holds rank q x total."""
        if not self.buckets or self.buckets[-1][1] <= 0:
            return 0.0
        rank = q * self.buckets[-1][1]
        lower_le, lower_count = 0.0, 0.0
        for le, count in self.buckets:
            if count >= rank:
                if math.isinf(le):
                    return lower_le  # past the highest finite bucket: its bound, as Prometheus
                inside = count - lower_count
                return lower_le + (le - lower_le) * ((rank - lower_count) / inside if inside else 1)
            lower_le, lower_count = le, count
        return lower_le


def parse_counts(text: str) -> Counts:
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("route") in OPS_ROUTES:
                continue
            if sample.name == "http_requests_total":
                requests += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    errors += sample.value
            elif sample.name == "http_request_duration_seconds_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return Counts(requests, errors, tuple(sorted(buckets.items())))


def scrape(url: str, timeout: float = 2.0) -> Counts | None:
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as reply:  # noqa: S310  # local http only
            return parse_counts(reply.read().decode())
    except (OSError, ValueError):
        return None  # down or restarting: its requests count from its next answer


@dataclass(frozen=True)
class Verdict:
    canary: Counts
    stable: Counts
    reasons: tuple[str, ...]

    @property
    def fields(self) -> dict[str, float]:
        return {
            "canary_requests": self.canary.requests,
            "canary_error_ratio": round(self.canary.error_ratio, 4),
            "stable_error_ratio": round(self.stable.error_ratio, 4),
            "canary_p95_seconds": round(self.canary.quantile(0.95), 4),
            "stable_p95_seconds": round(self.stable.quantile(0.95), 4),
        }


def judge(canary: Counts, stable: Counts, settings: CanarySettings) -> tuple[str, ...]:
    """Why the canary is worse than the stable group (nothing: it is not)."""
    reasons = []
    if canary.error_ratio > stable.error_ratio + settings.max_error_increase:
        reasons.append("error_ratio")
    if stable.requests:
        canary_p95, stable_p95 = canary.quantile(0.95), stable.quantile(0.95)
        if (
            canary_p95 > stable_p95 * settings.max_p95_ratio
            and canary_p95 - stable_p95 > settings.min_p95_increase_seconds
        ):
            reasons.append("p95_latency")
    return tuple(reasons)


@dataclass
class Controller:
    """Scrape, compare, decide, every ``interval_seconds``: :meth:`tick` is one round."""

    settings: CanarySettings
    stable_urls: list[str]
    canary_urls: list[str]
    dynamic_dir: Path
    state_path: Path
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    outcome: str = "progressing"
    step: int = 0
    step_started: float = field(default_factory=time.monotonic)
    samples: dict[str, deque[tuple[float, Counts]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weight_gauge = Gauge(
            "canary_weight_percent",
            "Percent of requests routed to the canary.",
            registry=self.registry,
        )
        self.decisions = Counter(
            "canary_decisions",
            "Promotions and rollbacks, by decision.",
            ["decision"],
            registry=self.registry,
        )
        self.state = Enum(
            "canary_rollout",
            "Where the rollout is.",
            states=["progressing", "promoted", "rolled_back"],
            registry=self.registry,
        )
        self.decided_at = Gauge(
            "canary_decision_timestamp_seconds",
            "Unix time of the last promotion or rollback.",
            registry=self.registry,
        )
        self.error_ratio = Gauge(
            "canary_window_error_ratio",
            "5xx / requests in the window.",
            ["group"],
            registry=self.registry,
        )
        self.p95 = Gauge(
            "canary_window_p95_seconds",
            "p95 latency in the window.",
            ["group"],
            registry=self.registry,
        )
        for decision in ("promote", "rollback"):
            self.decisions.labels(decision)
        saved = self._load()
        if saved:  # a restarted controller keeps the outcome of this launch's rollout
            self.outcome, self.step = saved["outcome"], int(saved["step"])
            self.decided_at.set(float(saved.get("decided_at", 0)))
        self.state.state(self.outcome)
        self.weight_gauge.set(self.weight)

    @property
    def weight(self) -> int:
        return 0 if self.outcome == "rolled_back" else self.settings.plan()[self.step]

    def _load(self) -> dict[str, Any] | None:
        try:
            saved: dict[str, Any] = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        return saved

    def _save(self) -> None:
        state = {
            "outcome": self.outcome,
            "step": self.step,
            "weight": self.weight,
            "decided_at": time.time(),
        }
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        temporary.replace(self.state_path)

    def window(self, now: float) -> Verdict:
        """Each group's counts since the window (or the current step) began."""
        since = max(now - self.settings.window_seconds, self.step_started)
        groups = {"canary": Counts(), "stable": Counts()}
        for group, urls in (("canary", self.canary_urls), ("stable", self.stable_urls)):
            for url in urls:
                series = self.samples.get(url, deque())
                inside = [counts for at, counts in series if at >= since]
                if len(inside) >= 2:
                    groups[group] = groups[group] + (inside[-1] - inside[0])
        canary, stable = groups["canary"], groups["stable"]
        return Verdict(canary, stable, judge(canary, stable, self.settings))

    def tick(self, now: float | None = None) -> str | None:
        """One round; returns the decision it took ("promote", "rollback") or None."""
        now = time.monotonic() if now is None else now
        for url in [*self.canary_urls, *self.stable_urls]:
            counts = scrape(url)
            series = self.samples.setdefault(url, deque())
            if counts is not None:
                series.append((now, counts))
            while (
                series
                and series[0][0]
                < now - self.settings.window_seconds - self.settings.interval_seconds
            ):
                series.popleft()
        if self.outcome != "progressing":
            return None
        verdict = self.window(now)
        for group, counts in (("canary", verdict.canary), ("stable", verdict.stable)):
            self.error_ratio.labels(group).set(counts.error_ratio)
            self.p95.labels(group).set(counts.quantile(0.95))
        if verdict.canary.requests < self.settings.min_requests:
            return None
        if verdict.reasons:
            self._decide("rollback", verdict)
            return "rollback"
        if now - self.step_started >= self.settings.window_seconds:
            self._decide("promote", verdict)
            return "promote"
        return None

    def _decide(self, decision: str, verdict: Verdict) -> None:
        log = structlog.get_logger("canary")
        before = self.weight
        if decision == "rollback":
            self.outcome = "rolled_back"
        else:
            self.step += 1
            self.step_started = time.monotonic()
            if self.step == len(self.settings.plan()) - 1:
                self.outcome = "promoted"
        write_weights(self.dynamic_dir, self.canary_urls, self.weight)
        self._save()
        self.decisions.labels(decision).inc()
        self.decided_at.set(time.time())
        self.state.state(self.outcome)
        self.weight_gauge.set(self.weight)
        if decision == "rollback":
            event = "canary.rolled_back"
        else:
            event = "canary.promoted" if self.outcome == "promoted" else "canary.step"
        emit = log.warning if decision == "rollback" else log.info
        emit(
            event,
            weight_from=before,
            weight=self.weight,
            reasons=list(verdict.reasons),
            **verdict.fields,
        )


def main() -> int:
    """The controller process ``make dev`` runs beside the canary instances."""
    from {{ cookiecutter.project_slug }}.config import Settings
    from {{ cookiecutter.project_slug }}.logging import configure_logging

    configure_logging(Settings())
    settings = CanarySettings()
    state_dir = Path(os.environ["DEVSTACK_DIR"])
    controller = Controller(
        settings,
        stable_urls=os.environ["STABLE_UPSTREAMS"].split(","),
        canary_urls=os.environ["CANARY_UPSTREAMS"].split(","),
        dynamic_dir=state_dir / "traefik" / "dynamic",
        state_path=state_dir / STATE_FILE,
    )
    start_http_server(settings.controller_port, addr="127.0.0.1", registry=controller.registry)
    structlog.get_logger("canary").info(
        "canary.started",
        weight=controller.weight,
        plan=settings.plan(),
        window_seconds=settings.window_seconds,
        outcome=controller.outcome,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        started = time.monotonic()
        controller.tick(started)
        time.sleep(max(0.0, settings.interval_seconds - (time.monotonic() - started)))


if __name__ == "__main__":
    raise SystemExit(main())
