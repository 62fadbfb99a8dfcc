"""Errors of data portability, each mapped to one exit code of the CLI (docs/cli.md).

They subclass the kernel hierarchy of :mod:`skyferry.core.errors`, so callers that catch a
``SkyferryError`` keep working: bad archives are ``ValidationError`` (exit 2), a target
that holds other events and a failed verification are their own classes (exit 1).
"""

from __future__ import annotations

from typing import Any, ClassVar

from skyferry.core.errors import SkyferryError, ValidationError


class ArchiveError(ValidationError):
    """The archive is malformed, incomplete or tampered with; names the object and line."""

    def __init__(self, location: str, problem: str, line: int | None = None) -> None:
        self.location = location
        self.line = line
        self.problem = problem
        where = f"{location}, line {line}" if line is not None else location
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its own arguments (the default would call ``__init__`` with the message alone)."""
        return (type(self), (self.location, self.problem, self.line))


class WrongKey(ArchiveError):
    """The encryption key given does not open the archive (or none was given)."""


class TargetConflict(SkyferryError):
    """The target already holds a different event where the copy would write one."""

    exit_code: ClassVar[int] = 1

    def __init__(self, stream_id: str, version: int, detail: str) -> None:
        self.stream_id = stream_id
        self.version = version
        self.detail = detail
        super().__init__(f"target differs at stream {stream_id!r} version {version}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its own arguments."""
        return (type(self), (self.stream_id, self.version, self.detail))


class VerificationFailed(SkyferryError):
    """Source and target differ; ``differences`` lists each difference in words."""

    exit_code: ClassVar[int] = 1

    def __init__(self, differences: list[str]) -> None:
        self.differences = differences
        super().__init__(f"{len(differences)} difference(s): " + "; ".join(differences[:5]))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its own arguments."""
        return (type(self), (self.differences,))
