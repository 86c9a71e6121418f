"""The throwaway SeaweedFS the proofs run against (devstack/seaweedfs.py)."""

from devstack.seaweedfs import S3Server, run_seaweedfs

__all__ = ["S3Server", "run_seaweedfs"]
