"""A local directory as an archive: ``file:///absolute/dir`` or a bare path (``./exports``).

URL fields: the directory only (created on the first ``put``).

``put`` is atomic and durable: the bytes go to a temporary file in the same directory,
which is fsynced, renamed over the target (``os.replace`` is atomic on POSIX) and the
directory fsynced, so a reader sees the whole object or none of it, even after a crash.
Object names are relative ``/``-separated paths; a name that would leave the directory
(``..``, an absolute path, a symlink pointing outside) is rejected with
``ValidationError``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Final, Self
from urllib.parse import unquote, urlsplit

from skyferry.core.errors import ConfigurationError, ObjectNotFound, ObjectTooLarge, TransientError, ValidationError

TEMP_PREFIX: Final = ".tmp-"


class LocalArchive:
    """An archive in a local directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], url: str | None = None) -> None:
        self.root = Path(root)
        self.url = url or f"file://{self.root.absolute()}"

    @classmethod
    def from_url(cls, url: str) -> Self:
        """``file:///dir`` (``file://localhost/dir`` too) or a bare path."""
        if "://" not in url:
            if not url:
                raise ConfigurationError("an archive needs a directory")
            return cls(url, url)
        parts = urlsplit(url)
        if parts.scheme.lower() != "file":
            raise ConfigurationError(f"not a file:// URL: {url!r}")
        host = "" if parts.netloc in ("", "localhost") else parts.netloc
        path = unquote(host + parts.path)
        if not path:
            raise ConfigurationError(f"{url!r} names no directory")
        return cls(path, url)

    def _path(self, name: str) -> Path:
        """The file of object ``name``; raise if the name is malformed or escapes the root."""
        if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
            raise ValidationError(f"archive object name {name!r} is not a relative / path")
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValidationError(f"archive object name {name!r} must be a relative path without . or ..")
        if parts[-1].startswith(TEMP_PREFIX):
            raise ValidationError(f"archive object name {name!r} uses the reserved prefix {TEMP_PREFIX}")
        path = self.root.joinpath(*parts)
        root = self.root.resolve()
        resolved = path.resolve()
        if resolved != root and root not in resolved.parents:
            raise ValidationError(f"archive object name {name!r} leads outside {root}")
        return path

    def put(self, name: str, data: bytes) -> None:
        """Write ``name`` atomically (temporary file, fsync, rename, fsync of the directory)."""
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as e:
            raise _translate(e, path) from e

    def get(self, name: str, limit: int | None = None) -> bytes:
        """The bytes of ``name``; ``ObjectNotFound`` when absent, ``ObjectTooLarge`` over ``limit``
        (read no further than ``limit + 1`` bytes)."""
        path = self._path(name)
        location = f"{self.url.rstrip('/')}/{name}"
        try:
            with path.open("rb") as f:
                data = f.read() if limit is None else f.read(limit + 1)
        except (FileNotFoundError, IsADirectoryError) as e:
            raise ObjectNotFound(location) from e
        except OSError as e:
            raise _translate(e, path) from e
        if limit is not None and len(data) > limit:
            raise ObjectTooLarge(location, limit)
        return data

    def exists(self, name: str) -> bool:
        """Whether the object ``name`` exists."""
        return self._path(name).is_file()

    def list(self, prefix: str = "") -> list[str]:
        """Names of the objects under ``prefix``, sorted (temporary files excluded)."""
        if not self.root.is_dir():
            return []
        names = []
        try:
            for directory, _, files in os.walk(self.root):
                relative = Path(directory).relative_to(self.root).as_posix()
                for file in files:
                    if file.startswith(TEMP_PREFIX):
                        continue
                    name = file if relative == "." else f"{relative}/{file}"
                    if name.startswith(prefix):
                        names.append(name)
        except OSError as e:
            raise _translate(e, self.root) from e
        return sorted(names)

    def delete(self, name: str) -> None:
        """Delete ``name`` if it exists."""
        path = self._path(name)
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise _translate(e, path) from e


def _translate(error: OSError, path: Path) -> ConfigurationError | TransientError:
    """Permissions and wrong paths cannot heal by retrying; other I/O errors might.

    A missing file or directory is a wrong path too (``put`` creates the directories it
    needs, so one it cannot create, as under ``/proc``, is not there to be made).
    """
    if isinstance(
        error, PermissionError | NotADirectoryError | IsADirectoryError | FileExistsError | FileNotFoundError
    ):
        return ConfigurationError(f"archive path {path}: {error.strerror or error}")
    return TransientError(f"archive path {path}: {error.strerror or error}")
