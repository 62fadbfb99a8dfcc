"""The s3:// archive on moto server beyond the conformance suite: a missing bucket, multipart uploads."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from skyferry.adapters.archives import s3 as s3_adapter
from skyferry.core.errors import ConfigurationError
from tests.integration.adapters.aws_support import Counter, boto
from tests.services import moto_server


def test_a_missing_bucket_is_a_configuration_error_naming_it() -> None:
    endpoint = moto_server.endpoint()
    archive = s3_adapter.S3Archive.from_url(f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}?endpoint={endpoint}")
    with pytest.raises(ConfigurationError, match="no-such-bucket"):
        archive.put("x", b"1")


def test_large_objects_go_multipart_and_a_failed_upload_is_aborted() -> None:
    s3 = boto("s3")
    bucket = f"skyferry-mp-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    counter = Counter()
    client = counter.attach(boto("s3"))
    archive = s3_adapter.S3Archive(bucket, "x", client=client, multipart_bytes=5 * 1024 * 1024)
    data = bytes(range(256)) * (48 * 1024)  # 12 MiB
    archive.put("big", data)
    assert counter.calls["CreateMultipartUpload"] == 1
    assert counter.calls["UploadPart"] == 3
    assert archive.get("big") == data

    def fail_second_part(params: dict[str, Any], **kwargs: Any) -> None:
        if params.get("PartNumber") == 2:
            raise RuntimeError("connection lost")

    client.meta.events.register("provide-client-params.s3.UploadPart", fail_second_part)
    with pytest.raises(RuntimeError):
        archive.put("torn", data)
    assert not archive.exists("torn")
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    for name in archive.list():
        archive.delete(name)
    s3.delete_bucket(Bucket=bucket)
