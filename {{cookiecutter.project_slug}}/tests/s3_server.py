"""The throwaway SeaweedFS the proofs run against (devstack/seaweedfs.py)."""

from typing import Any

from pydantic import SecretStr

from devstack.seaweedfs import S3Server, run_seaweedfs

from {{ cookiecutter.project_slug }}.config import Settings

__all__ = ["S3Server", "on_s3", "run_seaweedfs"]


def on_s3(settings: Settings, s3: S3Server, **overrides: Any) -> Settings:
    """``settings`` pointed at ``s3`` with its credentials, plus ``overrides``."""
    return settings.model_copy(
        update={
            "s3_endpoint_url": s3.endpoint,
            "s3_bucket": s3.bucket,
            "s3_access_key_id": s3.access_key,
            "s3_secret_access_key": SecretStr(s3.secret_key),
            **overrides,
        }
    )
