"""The schema of the ``postgresql://`` stores: its tables, their migrations, positions.

One schema holds both stores (``events``, ``views``, ``checkpoints``) and the
``schema_version`` table.  The adapter migrates an older schema forward under an
advisory lock (concurrent processes migrate once) and refuses, with a
:class:`ConfigurationError`, a schema that a newer skyferry has written.
"""

from __future__ import annotations

import re
from typing import Final

from skyferry.core.errors import (
    ValidationError,
)

SCHEMA_VERSION: Final = 1
"""The newest schema version this code knows; an older schema is migrated to it."""

DEFAULT_SCHEMA: Final = "skyferry"


_SCHEMA_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_POSITION_DIGITS: Final = 20


# Each migration takes the schema from version n to n + 1; {s} is the quoted schema.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE {s}.events (
        position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id uuid NOT NULL,
        stream_id text COLLATE "C" NOT NULL,
        version integer NOT NULL,
        type text NOT NULL,
        schema_version integer NOT NULL,
        data json NOT NULL,
        metadata json NOT NULL,
        occurred_at timestamptz NOT NULL,
        recorded_at timestamptz NOT NULL,
        CONSTRAINT events_id UNIQUE (id),
        CONSTRAINT events_stream_version UNIQUE (stream_id, version)
    );
    CREATE INDEX events_stream_heads ON {s}.events (stream_id) WHERE version = 1;
    CREATE TABLE {s}.views (
        collection text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        value jsonb NOT NULL,
        revision integer NOT NULL,
        PRIMARY KEY (collection, key)
    );
    CREATE TABLE {s}.checkpoints (
        projection text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        value text NOT NULL,
        PRIMARY KEY (projection, key)
    );
    """,
)


def prefix_end(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (code point order).

    ``None`` when there is none (empty prefix, or only U+10FFFF characters).  With the
    ``"C"`` collation of the key columns, ``prefix <= key < prefix_end(prefix)`` is an index
    range scan of exactly the keys starting with ``prefix``.
    """
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return None
    last = ord(stripped[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:  # surrogates cannot be stored: skip to the next scalar value
        last = 0xE000
    return stripped[:-1] + chr(last)


def encode_position(position: int) -> str:
    """The opaque position: zero-padded decimal, so that text order is numeric order."""
    return str(position).zfill(_POSITION_DIGITS)


def decode_position(position: str | None) -> int:
    """Inverse of :func:`encode_position` (``None`` is before the first event)."""
    if position is None:
        return 0
    try:
        return int(position)
    except ValueError as e:
        raise ValidationError(f"{position!r} is not a position of a PostgreSQL store") from e
