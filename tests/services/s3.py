"""The ``s3://`` archive on moto server: a fresh bucket per test, emptied and deleted afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from urllib.parse import quote

from tests.services import moto_server


@contextlib.contextmanager
def provide(kind: str, scheme: str) -> Iterator[str]:
    """A fresh bucket; the archive URL has a prefix, so prefix handling is exercised too."""
    import boto3

    endpoint = moto_server.endpoint()
    s3 = boto3.client("s3", region_name=moto_server.REGION, endpoint_url=endpoint)
    bucket = f"skyferry-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    try:
        yield f"s3://{bucket}/exports/run-1?region={moto_server.REGION}&endpoint={quote(endpoint, safe=':/')}"
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for entry in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=entry["Key"])
        for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        s3.delete_bucket(Bucket=bucket)
