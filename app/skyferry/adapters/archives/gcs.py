"""Cloud Storage archive: ``gs://BUCKET/PREFIX``.

URL fields
----------
``gs://BUCKET[/PREFIX]?project=PROJECT&endpoint=http://HOST:PORT``

* ``BUCKET`` (required): the bucket; ``PREFIX`` (optional): a folder inside it, so one
  bucket can hold several exports.  Object ``name`` is stored as ``PREFIX/name``.
* ``project`` (optional): the project billed for requests (defaults to the credentials').
* ``endpoint=http://HOST:PORT`` — *for tests and local use*: a GCS-compatible server such
  as ``gcp-storage-emulator``, reached with no credentials.  Without it the client uses
  Application Default Credentials (on Cloud Run: the service's service account).

``put`` is atomic: Cloud Storage makes an object visible only once its upload completed
(simple, multipart or resumable), so a reader sees the whole object or the previous one.
Errors: throttling (429), 5xx and dropped connections are retried with backoff, then
``TransientError``; a missing bucket or credentials is a ``ConfigurationError``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final, Self, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import google.cloud.storage as storage
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials

from skyferry.adapters.gcp import backoff_delay, call, translate
from skyferry.core.errors import ConfigurationError, ObjectNotFound, ObjectTooLarge, TransientError, ValidationError
from skyferry.core.ports import check_object_name

T = TypeVar("T")

IAM_PERMISSIONS: Final = (
    "storage.objects.create",
    "storage.objects.delete",
    "storage.objects.get",
    "storage.objects.list",
    "storage.buckets.get",
)
"""What the adapter calls: upload (create, and delete to replace), download, list, delete,
and bucket metadata (to tell a missing object from a missing bucket)."""
IAM_ROLES: Final = ("roles/storage.objectUser", "roles/storage.legacyBucketReader")
"""Predefined roles covering :data:`IAM_PERMISSIONS`, granted on the bucket only."""

ATTEMPTS: Final = 6
TIMEOUT_SECONDS: Final = 120.0


def parse_url(url: str) -> tuple[str, str, str | None, str | None]:
    """``(bucket, prefix, project, endpoint)`` of a ``gs://`` URL (prefix ends with ``/`` or is '')."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "gs":
        raise ConfigurationError(f"not a gs:// URL: {url!r}")
    bucket = parts.netloc
    if not bucket:
        raise ConfigurationError(f"{url!r}: the bucket is missing (gs://BUCKET/PREFIX)")
    prefix = unquote(parts.path.strip("/"))
    query = parse_qs(parts.query)
    unknown = set(query) - {"project", "endpoint"}
    if unknown:
        raise ConfigurationError(f"{url!r}: unknown parameter(s) {sorted(unknown)}; known: project, endpoint")
    return (
        bucket,
        f"{prefix}/" if prefix else "",
        query.get("project", [None])[0],
        query.get("endpoint", [None])[0],
    )


class GCSArchive:
    """An archive in a Cloud Storage bucket (see the module docstring)."""

    def __init__(self, url: str, client: storage.Client | None = None) -> None:
        self.bucket_name, self.prefix, self._project, self._endpoint = parse_url(url)
        self.url = url
        self._client = client
        self._lock = threading.Lock()
        self._what = f"Cloud Storage bucket gs://{self.bucket_name}"

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Parse ``url``; the client is built on first use."""
        return cls(url)

    @property
    def client(self) -> storage.Client:
        """The Cloud Storage client, built once."""
        with self._lock:
            if self._client is None:
                try:
                    if self._endpoint is None:
                        self._client = storage.Client(project=self._project)
                    else:
                        self._client = storage.Client(
                            project=self._project or "local",
                            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                            client_options={"api_endpoint": self._endpoint},
                        )
                except Exception as e:
                    raise translate(e, self._what) from e
            return self._client

    def _blob(self, name: str) -> Any:
        check_object_name(name)
        return self.client.bucket(self.bucket_name).blob(self.prefix + name)

    def _call(self, fn: Callable[[], T]) -> T:
        """``call`` plus the HTTP transport's own connection errors, which are retryable too."""
        for attempt in range(ATTEMPTS):
            try:
                return call(fn, self._what)
            except (requests.ConnectionError, requests.Timeout) as e:
                if attempt + 1 >= ATTEMPTS:
                    raise TransientError(f"{self._what}: unreachable after {ATTEMPTS} attempts: {e}") from e
                threading.Event().wait(backoff_delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def put(self, name: str, data: bytes) -> None:
        """Write the object ``name`` (replacing it) atomically."""
        blob = self._blob(name)
        self._call(
            lambda: blob.upload_from_string(data, content_type="application/octet-stream", timeout=TIMEOUT_SECONDS)
        )

    def get(self, name: str, limit: int | None = None) -> bytes:
        """The object's bytes; ``ObjectNotFound`` if absent.  With ``limit``, a ranged download
        of the first ``limit + 1`` bytes (``ObjectTooLarge`` when the object is larger)."""
        blob = self._blob(name)
        location = f"gs://{self.bucket_name}/{self.prefix}{name}"
        ranged = {} if limit is None else {"start": 0, "end": limit}
        try:
            data: bytes = self._call(lambda: blob.download_as_bytes(timeout=TIMEOUT_SECONDS, **ranged))
        except ConfigurationError as e:
            if isinstance(e.__cause__, gexc.NotFound) and self._bucket_exists():
                raise ObjectNotFound(location) from e
            raise
        except ValidationError as e:
            if isinstance(e.__cause__, gexc.RequestRangeNotSatisfiable):  # a range of an empty object
                return b""
            raise
        if limit is not None and len(data) > limit:
            raise ObjectTooLarge(location, limit)
        return data

    def _bucket_exists(self) -> bool:
        return bool(self._call(lambda: self.client.bucket(self.bucket_name).exists(timeout=TIMEOUT_SECONDS)))

    def exists(self, name: str) -> bool:
        """Whether the object exists."""
        blob = self._blob(name)
        return bool(self._call(lambda: blob.exists(timeout=TIMEOUT_SECONDS)))

    def list(self, prefix: str = "") -> list[str]:
        """Names of the objects under ``prefix`` (relative to the URL's prefix), sorted."""
        full = self.prefix + prefix
        names = self._call(
            lambda: [b.name for b in self.client.list_blobs(self.bucket_name, prefix=full, timeout=TIMEOUT_SECONDS)]
        )
        return sorted(n[len(self.prefix) :] for n in names)

    def delete(self, name: str) -> None:
        """Delete the object if it exists."""
        blob = self._blob(name)
        try:
            self._call(lambda: blob.delete(timeout=TIMEOUT_SECONDS))
        except ConfigurationError as e:
            if not isinstance(e.__cause__, gexc.NotFound) or not self._bucket_exists():
                raise
