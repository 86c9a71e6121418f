"""Object storage over any S3 API: presigned uploads and downloads, HEAD-verify, delete, multipart.

Guarantees: file bytes never pass through the process. Clients upload with a presigned POST
whose policy pins the exact key, the exact Content-Type and a ``content-length-range``, or with
presigned UploadPart URLs that each carry the part's SHA-256 (S3 refuses a part whose bytes do
not match). Presigning is local CPU (HMAC) and runs inline; every call that does I/O runs in a
worker thread, at most ``max_concurrency`` at once, so a slow S3 never blocks the event loop and
never takes every thread.

Needs: one :class:`ObjectStorage` per process, created and closed by the app's lifespan (or the
worker's process start). Endpoint, region, credentials and path-style addressing are arguments,
so SeaweedFS, MinIO, R2 and AWS need no code change. ``on_request`` hears the operation name of
every S3 call made (a metric's counter, for the bill). Imports no domain.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

# Keys no longer than this fit every S3 implementation's limit (1024 bytes in AWS).
MAX_KEY_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class PresignedPost:
    url: str
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class ObjectHead:
    size: int
    content_type: str
    etag: str
    version_id: str | None
    checksum_sha256: str | None


@dataclass(frozen=True, slots=True)
class PresignedPart:
    part_number: int
    url: str
    # Base64 SHA-256 the client must send as x-amz-checksum-sha256 (it is signed into the URL).
    checksum_sha256: str


@dataclass(frozen=True, slots=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: Any


class StorageUnavailable(ConnectionError):
    """S3 did not answer, or answered with a 5xx: temporary, worth a retry (a 503 to clients).
    A ConnectionError, so job runners that retry connection errors retry this one too."""


class ObjectMissing(LookupError):
    """No object under this key."""


class ObjectChanged(Exception):
    """The object under this key is not the version (ETag) the caller verified."""


def sha256_b64(data: bytes) -> str:
    """The checksum form S3 speaks: base64 of the raw SHA-256 digest."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class ObjectStorage:
    """One bucket on one S3 endpoint, with a single thread-safe boto3 client."""

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        path_style: bool = True,
        max_concurrency: int = 16,
        connect_timeout: float = 2.0,
        read_timeout: float = 30.0,
        on_request: Callable[[str], None] | None = None,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url or None
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path" if path_style else "auto"},
            # botocore's pool must hold at least as many sockets as threads may use at once.
            max_pool_connections=max_concurrency,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": 3, "mode": "standard"},
            # Checksums only when an operation requires them: SeaweedFS, R2 and older MinIO
            # reject the CRC trailers newer botocore adds by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A Session per storage: boto3's default session is module-level state.
        session = boto3.session.Session(
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            region_name=region,
        )
        self.client: S3Client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
        if on_request is not None:
            # Every call S3 bills, by operation (PutObject, HeadObject...), answered or failed;
            # presigning makes none.
            # The operation comes from the event's name: "after-call-error" carries no model
            # (a connection refused must still be counted, and never raise here).
            def counted(event_name: str, **_: Any) -> None:
                on_request(event_name.rsplit(".", 1)[-1])

            self.client.meta.events.register("after-call.s3", counted)
            self.client.meta.events.register("after-call-error.s3", counted)
        self._limiter = anyio.CapacityLimiter(max_concurrency)

    async def _run(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(
                partial(func, *args, **kwargs), limiter=self._limiter
            )
        except BotoCoreError as exc:
            # No answer at all: unreachable, timed out, no credentials to sign with.
            raise StorageUnavailable(type(exc).__name__) from exc
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            # 501 Not Implemented is a missing feature (configure_bucket reports it), not an
            # outage.
            if 500 <= status < 600 and status != 501:
                raise StorageUnavailable(exc.response.get("Error", {}).get("Code", "5xx")) from exc
            raise

    def close(self) -> None:
        self.client.close()

    # --- presigning: local CPU, no I/O -------------------------------------------------------

    def presign_post(
        self, key: str, *, content_type: str, max_size: int, expires_in: int
    ) -> PresignedPost:
        """A browser POST upload of exactly ``key``, ``content_type`` and 1..max_size bytes."""
        post = self.client.generate_presigned_post(
            Bucket=self.bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[
                {"Content-Type": content_type},
                ["content-length-range", 1, max_size],
            ],
            ExpiresIn=expires_in,
        )
        return PresignedPost(url=post["url"], fields={k: str(v) for k, v in post["fields"].items()})

    def presign_get(
        self,
        key: str,
        *,
        expires_in: int,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename is not None:
            # Attachment: a user's HTML or SVG is downloaded, never rendered on our origin.
            safe = filename.replace('"', "").replace("\\", "")
            params["ResponseContentDisposition"] = f'attachment; filename="{safe}"'
        if content_type is not None:
            params["ResponseContentType"] = content_type
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)

    def presign_part(
        self, key: str, upload_id: str, part_number: int, *, checksum_sha256: str, expires_in: int
    ) -> PresignedPart:
        url = self.client.generate_presigned_url(
            "upload_part",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "UploadId": upload_id,
                "PartNumber": part_number,
                "ChecksumSHA256": checksum_sha256,
            },
            ExpiresIn=expires_in,
        )
        return PresignedPart(part_number=part_number, url=url, checksum_sha256=checksum_sha256)

    # --- I/O: in threads, bounded -------------------------------------------------------------

    async def head(self, key: str) -> ObjectHead | None:
        """The object's metadata, or None when it does not exist."""
        try:
            reply = await self._run(
                self.client.head_object, Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return ObjectHead(
            size=reply["ContentLength"],
            content_type=reply.get("ContentType", ""),
            etag=reply["ETag"].strip('"'),
            version_id=reply.get("VersionId"),
            checksum_sha256=reply.get("ChecksumSHA256"),
        )

    async def get_bytes(self, key: str, *, if_match: str | None = None) -> bytes:
        """The object's bytes. Raises :class:`ObjectMissing` when there is none, and, with
        ``if_match``, :class:`ObjectChanged` when its ETag is another: a presigned POST stays
        usable until it expires, so a verified object can be overwritten after the check."""

        def read() -> bytes:
            try:
                if if_match is None:
                    reply = self.client.get_object(Bucket=self.bucket, Key=key)
                else:
                    reply = self.client.get_object(
                        Bucket=self.bucket, Key=key, IfMatch=f'"{if_match}"'
                    )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in {"404", "NoSuchKey", "NotFound"}:
                    raise ObjectMissing(key) from exc
                if code in {"412", "PreconditionFailed"}:
                    raise ObjectChanged(key) from exc
                raise
            body: bytes = reply["Body"].read()
            return body

        return await self._run(read)

    async def put_bytes(self, key: str, data: bytes, *, content_type: str) -> str:
        reply = await self._run(
            self.client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
        )
        return reply["ETag"].strip('"')

    async def delete(self, key: str) -> None:
        """Idempotent: deleting a missing key is not an error in S3."""
        await self._run(self.client.delete_object, Bucket=self.bucket, Key=key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            if chunk:
                await self._run(
                    self.client.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True},
                )

    async def create_multipart(self, key: str, *, content_type: str) -> str:
        reply = await self._run(
            self.client.create_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            ContentType=content_type,
            ChecksumAlgorithm="SHA256",
        )
        return reply["UploadId"]

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str, str]]
    ) -> str:
        """``parts``: (number, etag, base64 sha256). Returns the object's ETag."""
        reply = await self._run(
            self.client.complete_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": number, "ETag": etag, "ChecksumSHA256": checksum}
                    for number, etag, checksum in parts
                ]
            },
        )
        return reply["ETag"].strip('"')

    async def list_parts(self, key: str, upload_id: str) -> list[tuple[int, str, int]]:
        """(number, etag, size) of each part S3 holds for the upload, in order."""
        reply = await self._run(
            self.client.list_parts, Bucket=self.bucket, Key=key, UploadId=upload_id
        )
        return [(part["PartNumber"], part["ETag"], part["Size"]) for part in reply.get("Parts", [])]

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self._run(
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
            )
        except ClientError as exc:
            # Already completed or aborted: the outcome the caller wanted.
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise

    async def list_multipart(self, prefix: str) -> list[MultipartUpload]:
        reply = await self._run(
            self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=prefix
        )
        return [
            MultipartUpload(
                key=item["Key"], upload_id=item["UploadId"], initiated=item["Initiated"]
            )
            for item in reply.get("Uploads", [])
        ]

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, in S3's (lexicographic) order."""

        def listing() -> list[str]:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            return [item["Key"] for page in pages for item in page.get("Contents", [])]

        return await self._run(listing)

    async def count(self, prefix: str) -> int:
        def count() -> int:
            total = 0
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                total += page.get("KeyCount", 0)
            return total

        return await self._run(count)

    async def ensure_bucket(self) -> None:
        """The init job's step: create the bucket once (an existing one is fine)."""
        try:
            await self._run(self.client.create_bucket, Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            }:
                raise

    async def configure_bucket(
        self, *, cors_origins: Sequence[str], abort_incomplete_after_days: int
    ) -> dict[str, bool]:
        """CORS for browser uploads and the lifecycle rule that aborts stale multipart uploads.

        Returns which of the two the server accepted: not every S3 API implements both (the
        sweeper aborts stale multipart uploads either way).
        """
        applied: dict[str, bool] = {}
        try:
            await self._run(
                self.client.put_bucket_cors,
                Bucket=self.bucket,
                CORSConfiguration={
                    "CORSRules": [
                        {
                            "AllowedOrigins": list(cors_origins),
                            "AllowedMethods": ["POST", "PUT", "GET", "HEAD"],
                            "AllowedHeaders": ["*"],
                            "ExposeHeaders": ["ETag", "x-amz-checksum-sha256"],
                            "MaxAgeSeconds": 3600,
                        }
                    ]
                },
            )
            applied["cors"] = True
        except ClientError:
            applied["cors"] = False
        try:
            await self._run(
                self.client.put_bucket_lifecycle_configuration,
                Bucket=self.bucket,
                LifecycleConfiguration={
                    "Rules": [
                        {
                            "ID": "abort-incomplete-multipart",
                            "Status": "Enabled",
                            "Filter": {"Prefix": ""},
                            "AbortIncompleteMultipartUpload": {
                                "DaysAfterInitiation": abort_incomplete_after_days
                            },
                        }
                    ]
                },
            )
            applied["lifecycle"] = True
        except ClientError:
            applied["lifecycle"] = False
        return applied
