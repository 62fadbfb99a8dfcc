"""``--shard i/n``: split the work by stream, so that n processes move one store together.

A stream belongs to shard ``int(sha256(stream id)[:8], 16) % n``: stable across runs,
machines and Python versions (unlike ``hash()``).  Shards are numbered from 0, like the
``JOB_COMPLETION_INDEX`` of a Kubernetes Indexed Job.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from skyferry.core.errors import ConfigurationError
from skyferry.core.ports import StoredRow

MAX_SHARDS: Final = 1024
"""The most shards ``--shard i/n`` splits into (a process each; the hash spans 2**32 values)."""


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (``0 <= index < count``)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str | None) -> Shard | None:
        """``"i/n"`` as a :class:`Shard`; ``None`` or ``"0/1"`` mean all streams (``None``)."""
        if text is None:
            return None
        found = re.fullmatch(r"([0-9]{1,9})/([0-9]+)", text)  # ASCII digits only, no spaces
        if found is not None and (len(found.group(2)) > 9 or int(found.group(2)) > MAX_SHARDS):
            raise ConfigurationError(f"--shard {text!r}: at most {MAX_SHARDS} shards")
        index, count = (int(found.group(1)), int(found.group(2))) if found else (-1, 0)
        if count < 1 or not 0 <= index < count:
            raise ConfigurationError(f"--shard {text!r}: expected i/n with 0 <= i < n, for example 0/4")
        return None if count == 1 else cls(index, count)

    def owns(self, stream_id: str) -> bool:
        """Whether ``stream_id`` belongs to this shard."""
        return shard_of(stream_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(stream_id: str, count: int) -> int:
    """The shard (0-based) that ``stream_id`` belongs to among ``count``."""
    return int(hashlib.sha256(stream_id.encode()).hexdigest()[:8], 16) % count


def owned(shard: Shard | None, stream_id: str) -> bool:
    """Whether ``stream_id`` is in ``shard`` (every stream is when ``shard`` is ``None``)."""
    return shard is None or shard.owns(stream_id)


def owned_rows(shard: Shard | None, rows: list[StoredRow]) -> list[StoredRow]:
    """The rows of ``rows`` whose stream is in ``shard`` (``rows`` itself when ``shard`` is ``None``)."""
    return rows if shard is None else [row for row in rows if shard.owns(row[2])]
