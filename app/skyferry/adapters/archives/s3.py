"""S3 archive (``s3://``): exports written as objects under a prefix of a bucket.

URL
---
``s3://BUCKET/PREFIX?region=eu-west-1``

``BUCKET``
    The bucket (``providers/aws`` creates it: encrypted, versioned, public access blocked).
``PREFIX``
    Optional key prefix; object ``name`` is stored at ``PREFIX/name``.
``region``, ``profile``, ``attempts``
    See :mod:`skyferry.adapters.aws`.
``multipart``
    Objects larger than this many MiB are uploaded in parts (default 8, the minimum
    useful; parts are this size too).
``endpoint``
    A custom endpoint (moto server, MinIO): **for tests and local use** (path-style
    addressing is used with it).

``put`` is atomic: a plain ``PutObject`` is, and a multipart upload becomes visible only
at ``CompleteMultipartUpload`` (a failed upload is aborted, never left half-written).
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

from skyferry.adapters import aws
from skyferry.core.errors import ConfigurationError, ObjectNotFound, ObjectTooLarge
from skyferry.core.ports import check_object_name

#: The API operations the archive calls and the IAM actions each needs.
IAM_ACTIONS_BY_OPERATION: Final[dict[str, tuple[str, ...]]] = {
    "PutObject": ("s3:PutObject",),
    "GetObject": ("s3:GetObject",),
    "HeadObject": ("s3:GetObject",),
    "ListObjectsV2": ("s3:ListBucket",),
    "DeleteObject": ("s3:DeleteObject",),
    "CreateMultipartUpload": ("s3:PutObject",),
    "UploadPart": ("s3:PutObject",),
    "CompleteMultipartUpload": ("s3:PutObject",),
    "AbortMultipartUpload": ("s3:AbortMultipartUpload",),
}
#: Actions on objects (``arn:...:bucket/prefix/*``) and on the bucket (``ListBucket``).
IAM_OBJECT_ACTIONS: Final = ("s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject")
IAM_BUCKET_ACTIONS: Final = ("s3:ListBucket",)

MIB: Final = 1024 * 1024
DEFAULT_MULTIPART_MIB: Final = 8


class S3Archive:
    """Archive on an S3 bucket; ``client`` is a boto3 S3 client (built on first use if absent)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any | None = None,
        options: aws.AwsOptions | None = None,
        multipart_bytes: int = DEFAULT_MULTIPART_MIB * MIB,
    ) -> None:
        if not bucket:
            raise ConfigurationError("s3:// URL names no bucket: s3://BUCKET/PREFIX?region=...")
        if multipart_bytes < 5 * MIB:
            raise ConfigurationError("s3:// multipart threshold must be at least 5 MiB (S3's smallest part)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._options = options or aws.AwsOptions()
        self._client = client
        self._part = multipart_bytes
        query = "&".join(
            f"{k}={quote(str(v), safe=':/')}"
            for k, v in (("region", self._options.region), ("endpoint", self._options.endpoint))
            if v
        )
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/") + (f"?{query}" if query else "")

    @classmethod
    def from_url(cls, url: str) -> S3Archive:
        """Open ``s3://BUCKET/PREFIX?region=...`` (no I/O)."""
        bucket, prefix, options = aws.parse_options(url)
        extra = dict(options.extra or {})
        multipart = extra.pop("multipart", str(DEFAULT_MULTIPART_MIB))
        if extra:
            raise ConfigurationError(
                f"s3:// URL has unknown options {sorted(extra)}; known: region, endpoint, profile, attempts, multipart"
            )
        try:
            multipart_bytes = int(multipart) * MIB
        except ValueError as e:
            raise ConfigurationError("s3:// URL option multipart is a whole number of MiB") from e
        return cls(bucket, prefix, options=options, multipart_bytes=multipart_bytes)

    @property
    def client(self) -> Any:
        if self._client is None:
            options = self._options
            if options.endpoint:
                # path-style for emulators: no wildcard DNS for bucket subdomains on loopback
                self._client = aws.make_client("s3", options, s3={"addressing_style": "path"})
            else:
                self._client = aws.make_client("s3", options)
        return self._client

    def _key(self, name: str) -> str:
        check_object_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, operation: str, **kwargs: Any) -> Any:
        what = f"S3 bucket {self.bucket!r} ({operation})"
        try:
            return aws.call(getattr(self.client, operation), what, self._options.attempts, **kwargs)
        except ConfigurationError as e:
            if aws.error_code(e.__cause__ or e) == "NoSuchBucket":
                raise ConfigurationError(
                    f"S3 bucket {self.bucket!r} does not exist: create it (pulumi up) or fix the URL"
                ) from e.__cause__
            raise

    def put(self, name: str, data: bytes) -> None:
        """``PutObject``, or a multipart upload above the threshold (aborted on failure)."""
        key = self._key(name)
        if len(data) <= self._part:
            self._call("put_object", Bucket=self.bucket, Key=key, Body=data)
            return
        upload = self._call("create_multipart_upload", Bucket=self.bucket, Key=key)["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, len(data), self._part), start=1):
                response = self._call(
                    "upload_part",
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload,
                    PartNumber=number,
                    Body=data[start : start + self._part],
                )
                parts.append({"ETag": response["ETag"], "PartNumber": number})
            self._call(
                "complete_multipart_upload",
                Bucket=self.bucket,
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self._call("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload)
            raise

    def get(self, name: str, limit: int | None = None) -> bytes:
        """``GetObject``; a missing object raises ``ObjectNotFound``.  With ``limit``, a ranged
        ``GetObject`` of the first ``limit + 1`` bytes (``ObjectTooLarge`` when there are more)."""
        key = self._key(name)
        from botocore.exceptions import ClientError

        ranged = {} if limit is None else {"Range": f"bytes=0-{limit}"}
        try:
            response = self._call("get_object", Bucket=self.bucket, Key=key, **ranged)
        except ClientError as e:
            if aws.error_code(e) in ("NoSuchKey", "404"):
                raise ObjectNotFound(f"s3://{self.bucket}/{key}") from e
            if aws.error_code(e) == "InvalidRange":  # a range of an empty object
                return b""
            raise
        except ConfigurationError as e:
            if aws.error_code(e.__cause__ or e) == "NotFound":
                raise ObjectNotFound(f"s3://{self.bucket}/{key}") from e
            if aws.error_code(e.__cause__ or e) == "InvalidRange":
                return b""
            raise
        total = response.get("ContentRange", "").rpartition("/")[2]
        if limit is not None and total.isdigit() and int(total) > limit:
            response["Body"].close()
            raise ObjectTooLarge(f"s3://{self.bucket}/{key}", limit)
        body: bytes = response["Body"].read() if limit is None else response["Body"].read(limit + 1)
        if limit is not None and len(body) > limit:
            raise ObjectTooLarge(f"s3://{self.bucket}/{key}", limit)
        return body

    def exists(self, name: str) -> bool:
        """``HeadObject``; a denied one (403) is a ``ConfigurationError`` naming what to grant.

        S3 answers a missing key with 404 only to a caller allowed ``s3:ListBucket`` on the
        bucket; without it the answer is 403 for a missing key as for a forbidden one.
        """
        key = self._key(name)
        from botocore.exceptions import ClientError

        try:
            self._call("head_object", Bucket=self.bucket, Key=key)
        except ClientError as e:
            if aws.error_code(e) in ("404", "NoSuchKey"):
                return False
            if aws.error_code(e) in ("403", "AccessDenied", "Forbidden"):
                raise ConfigurationError(
                    f"s3://{self.bucket}/{key}: access denied (HeadObject). The role needs s3:GetObject on the "
                    f"archive's objects and s3:ListBucket on the bucket {self.bucket!r} (without it S3 answers a "
                    "missing object with 403 instead of 404)"
                ) from e
            raise
        except ConfigurationError as e:
            if aws.error_code(e.__cause__ or e) == "NotFound":
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        """``ListObjectsV2`` pages under ``PREFIX/prefix``, names relative to the archive."""
        base = f"{self.prefix}/" if self.prefix else ""
        names: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base + prefix}
        while True:
            page = self._call("list_objects_v2", **kwargs)
            names.extend(entry["Key"][len(base) :] for entry in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return sorted(names)
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def delete(self, name: str) -> None:
        """``DeleteObject`` (S3 deletes are idempotent)."""
        self._call("delete_object", Bucket=self.bucket, Key=self._key(name))
