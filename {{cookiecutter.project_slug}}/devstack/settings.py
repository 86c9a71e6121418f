"""The local stack's settings (:class:`StackSettings`).

Their own module so that what only needs the ports (the throwaway S3 of the proofs, the canary
controller) imports neither honcho nor the rest of the stack group.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Scrape jobs with a port from METRICS_PORTS_FROM, in order; the last three are exporters
# (Debian's prometheus-*-exporter packages), each run only where its binary is installed.
METRICS_JOBS = ("worker", "beat", "relay", "consumers", "postgres", "redis", "edge")


class StackSettings(BaseSettings):
    """Ports and places of the local stack, one environment variable each (see .env.example).

    Read by the launcher only: the service never sees these, which is why they are not part of
    :class:`~{{ cookiecutter.project_slug }}.config.Settings`.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    api_port: int = Field(default=8001, ge=1, le=65535)
    api_instances: int = Field(default=2, ge=1, le=32)
    edge_port: int = Field(default=8000, ge=1, le=65535)
    gateway_port: int = Field(default=8080, ge=1, le=65535)
    gateway_ops_port: int = Field(default=8082, ge=1, le=65535)
    s3_port: int = Field(default=8333, ge=1, le=65535)
    # SeaweedFS runs several servers; they take consecutive ports from here (and admin + 10000).
    s3_internal_ports_from: int = Field(default=18330, ge=1, le=55000)
    s3_bucket: str = "{{ cookiecutter.project_slug | replace('_', '-') }}"
    prometheus_port: int = Field(default=9090, ge=1, le=65535)
    # /metrics of the worker, beat, relay and consumers, then the exporters, consecutively.
    metrics_ports_from: int = Field(default=9101, ge=1, le=65500)
    devstack_dir: Path = Path(".devstack")

    def api_ports(self) -> list[int]:
        return [self.api_port + index for index in range(self.api_instances)]

    def metrics_ports(self) -> dict[str, int]:
        """Prometheus job name -> the port it scrapes (the API's are its own ports)."""
        return {name: self.metrics_ports_from + i for i, name in enumerate(METRICS_JOBS)}

    def seaweedfs_ports(self) -> dict[str, int]:
        base = self.s3_internal_ports_from
        ports = {
            "master.port": base,
            "master.port.grpc": base + 1,
            "volume.port": base + 2,
            "volume.port.grpc": base + 3,
            "filer.port": base + 4,
            "filer.port.grpc": base + 5,
            "s3.port.grpc": base + 6,
            "admin.port": base + 7,
        }
        # SeaweedFS's admin worker dials admin.port + 10000 whatever admin.port.grpc says.
        ports["admin.port.grpc"] = ports["admin.port"] + 10000
        return ports

    def named_ports(self, *, edge: bool) -> dict[str, int]:
        """Every port the stack binds, named after the setting that moves it."""
        named = {
            f"API_PORT + {index}" if index else "API_PORT": port
            for index, port in enumerate(self.api_ports())
        }
        named |= {"GATEWAY_PORT": self.gateway_port, "GATEWAY_OPS_PORT": self.gateway_ops_port}
        if edge:
            named["EDGE_PORT"] = self.edge_port
        named["S3_PORT"] = self.s3_port
        named["PROMETHEUS_PORT"] = self.prometheus_port
        named |= {
            f"METRICS_PORTS_FROM ({name})": port for name, port in self.metrics_ports().items()
        }
        named |= {
            f"S3_INTERNAL_PORTS_FROM ({name})": port
            for name, port in self.seaweedfs_ports().items()
        }
        return named
