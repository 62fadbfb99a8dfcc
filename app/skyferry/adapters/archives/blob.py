"""Azure Blob Storage archive (``az://``): exports written as blobs under a prefix of a container.

URL::

    az://ACCOUNT/CONTAINER/PREFIX[?endpoint=URL][&key=KEY]

* ``ACCOUNT`` -- the storage account; the endpoint is ``https://ACCOUNT.blob.core.windows.net``.
* ``CONTAINER`` -- the blob container (``providers/azure`` creates it: private, TLS 1.2,
  versioning on).  A missing container is a ``ConfigurationError``.
* ``PREFIX`` -- optional; object ``name`` is stored at ``PREFIX/name``.
* ``endpoint`` -- another blob endpoint (Azurite: ``http://127.0.0.1:PORT/devstoreaccount1``),
  *for tests and local use*.
* ``key`` -- a shared account key, *for tests and local use*; without it the archive
  signs in with ``DefaultAzureCredential`` (the managed identity, which holds "Storage
  Blob Data Contributor" on the container only).

``put`` is atomic: a single Put Blob is, and a larger upload stages blocks that become
visible only when the block list is committed.  Throttling (429/503) is retried with the
SDK's exponential retry policy, then raised as ``TransientError``.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob import ContainerClient

from skyferry.adapters import azure
from skyferry.adapters.registry import redact
from skyferry.core.errors import ConfigurationError, ObjectNotFound, ObjectTooLarge
from skyferry.core.ports import check_object_name

BLOB_DATA_ROLE: Final = "Storage Blob Data Contributor"
"""The data-plane role the archive needs, on its container (imported by ``providers/azure``)."""
BLOB_DATA_ROLE_ID: Final = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
"""Built-in role definition id of :data:`BLOB_DATA_ROLE`."""
SERVICE: Final = "blob storage"


class BlobArchive:
    """Archive on an Azure Blob Storage container (see the module docstring)."""

    def __init__(
        self,
        account: str,
        container: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        key: str | None = None,
        client: ContainerClient | None = None,
    ) -> None:
        if not account or not container:
            raise ConfigurationError("az:// URL must name an account and a container: az://ACCOUNT/CONTAINER/PREFIX")
        self.account = account
        self.container = container
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint or f"https://{account}.blob.core.windows.net"
        self._key = key
        self._client = client
        self.url = redact(f"az://{account}/{container}/{self.prefix}".rstrip("/"))

    @classmethod
    def from_url(cls, url: str) -> BlobArchive:
        """Open ``az://ACCOUNT/CONTAINER/PREFIX`` (no I/O)."""
        parts = urlsplit(url)
        if parts.scheme != "az":
            raise ConfigurationError(f"not an az:// URL: {redact(url)!r}")
        path = [unquote(p) for p in parts.path.split("/") if p]
        if not parts.hostname or not path:
            raise ConfigurationError(f"{redact(url)!r} must name an account and a container: az://ACCOUNT/CONTAINER")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "key"}
        if unknown:
            raise ConfigurationError(f"az:// URL has unknown options {sorted(unknown)}; known: endpoint, key")
        return cls(parts.hostname, path[0], "/".join(path[1:]), endpoint=query.get("endpoint"), key=query.get("key"))

    @property
    def client(self) -> ContainerClient:
        """The container client (built on first use)."""
        if self._client is None:
            key = None if self._key is None else {"account_name": self.account, "account_key": self._key}
            credential = azure.credential(key, scheme="az")
            self._client = ContainerClient(self.endpoint, self.container, credential=credential)
        return self._client

    def _blob(self, name: str) -> str:
        check_object_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _translate(self, e: Exception, what: str) -> Exception:
        code = getattr(e, "error_code", None)
        if code == "ContainerNotFound":
            return azure.missing(f"storage account {self.account!r}", f"container {self.container!r}")
        translated = azure.translate(e, SERVICE, what, f"{BLOB_DATA_ROLE!r} on container {self.container!r}")
        if translated is not None:
            return translated
        if isinstance(e, HttpResponseError) and (e.status_code or 0) < 500 and e.status_code != 429:
            return ConfigurationError(f"blob storage refused {what}: {e.message}")
        return azure.failed(SERVICE, what, e)

    def put(self, name: str, data: bytes) -> None:
        """Upload ``name`` (replacing it); visible whole or not at all."""
        blob = self._blob(name)
        try:
            self.client.upload_blob(blob, data, overwrite=True)
        except AzureError as e:
            raise self._translate(e, f"writing {blob}") from e

    def get(self, name: str, limit: int | None = None) -> bytes:
        """The blob's bytes, or ``ObjectNotFound``.  With ``limit``, a ranged download of the
        first ``limit + 1`` bytes (``ObjectTooLarge`` when the blob is larger)."""
        blob = self._blob(name)
        try:
            if limit is None:
                return bytes(self.client.download_blob(blob).readall())
            download = self.client.download_blob(blob, offset=0, length=limit + 1)
            if download.properties.size > limit:
                raise ObjectTooLarge(f"{self.url}/{name}", limit)
            data = bytes(download.readall())
        except ResourceNotFoundError as e:
            if getattr(e, "error_code", None) == "ContainerNotFound":
                raise self._translate(e, f"reading {blob}") from e
            raise ObjectNotFound(f"{self.url}/{name}") from e
        except HttpResponseError as e:
            if getattr(e, "error_code", None) != "InvalidRange" or self._size(blob) != 0:
                raise self._translate(e, f"reading {blob}") from e
            return b""  # a range of an empty blob
        except AzureError as e:
            raise self._translate(e, f"reading {blob}") from e
        if len(data) > limit:
            raise ObjectTooLarge(f"{self.url}/{name}", limit)
        return data

    def _size(self, blob: str) -> int:
        try:
            return int(self.client.get_blob_client(blob).get_blob_properties().size)
        except AzureError as e:
            raise self._translate(e, f"reading the properties of {blob}") from e

    def exists(self, name: str) -> bool:
        """Whether the blob exists."""
        blob = self._blob(name)
        try:
            return bool(self.client.get_blob_client(blob).exists())
        except AzureError as e:
            raise self._translate(e, f"checking {blob}") from e

    def list(self, prefix: str = "") -> list[str]:
        """Object names under ``prefix`` (relative to the archive's prefix), sorted."""
        base = f"{self.prefix}/" if self.prefix else ""
        try:
            names = [b.name[len(base) :] for b in self.client.list_blobs(name_starts_with=base + prefix)]
        except AzureError as e:
            raise self._translate(e, "listing blobs") from e
        return sorted(names)

    def delete(self, name: str) -> None:
        """Delete the blob if it exists."""
        blob = self._blob(name)
        try:
            self.client.delete_blob(blob)
        except ResourceNotFoundError as e:
            if getattr(e, "error_code", None) == "ContainerNotFound":
                raise self._translate(e, f"deleting {blob}") from e
        except AzureError as e:
            raise self._translate(e, f"deleting {blob}") from e
