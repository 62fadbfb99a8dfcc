"""The PostgreSQL view store: read models (``views``) and projection checkpoints in the
event store's schema; a commit is one transaction.

Documents are ``jsonb``, which cannot hold a string with NUL (U+0000) in it, though an
event's ``data`` may (events are ``json``, kept as their text): a projection whose document
would hold one fails its commit with the server's ``ValidationError``, and the worker parks
that event and goes on.  The ledger refuses control characters in what it copies into its
read models (an account's owner).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import orjson
import psycopg
import psycopg.errors
from psycopg import sql
from psycopg_pool import ConnectionPool

from skyferry.adapters.stores.postgres.client import (
    PostgresDatabase,
)
from skyferry.adapters.stores.postgres.layout import (
    prefix_end,
)
from skyferry.core.errors import (
    ConcurrencyError,
)
from skyferry.core.ports import (
    Doc,
    ViewChange,
)


class PostgresViewStore:
    """Read models (``views``) and projection checkpoints in the same PostgreSQL schema."""

    def __init__(self, url: str, *, client: ConnectionPool | None = None) -> None:
        self.db = PostgresDatabase(url, client=client)
        self.url = self.db.url
        v = self.db.table("views")
        self._upsert = sql.SQL(
            "INSERT INTO {v} AS d (collection, key, value, revision) VALUES (%s, %s, %s::jsonb, 1)"
            " ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value, revision = d.revision + 1"
        ).format(v=v)
        self._insert = sql.SQL(
            "INSERT INTO {} (collection, key, value, revision) VALUES (%s, %s, %s::jsonb, 1)"
            " ON CONFLICT (collection, key) DO NOTHING"
        ).format(v)
        self._update = sql.SQL(
            "UPDATE {} SET value = %s::jsonb, revision = revision + 1"
            " WHERE collection = %s AND key = %s AND revision = %s"
        ).format(v)
        self._delete = sql.SQL("DELETE FROM {} WHERE collection = %s AND key = %s").format(v)
        self._delete_at = sql.SQL("DELETE FROM {} WHERE collection = %s AND key = %s AND revision = %s").format(v)
        self._exists = sql.SQL("SELECT revision FROM {} WHERE collection = %s AND key = %s").format(v)
        self._checkpoint = sql.SQL(
            "INSERT INTO {} (projection, key, value) VALUES (%s, %s, %s)"
            " ON CONFLICT (projection, key) DO UPDATE SET value = excluded.value"
        ).format(self.db.table("checkpoints"))

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Parse ``url`` (see the package docstring); no I/O."""
        return cls(url)

    def get(self, collection: str, key: str) -> Doc | None:
        """The document at ``key``, or ``None``."""
        with self.db.connection(f"reading {collection}/{key}") as conn:
            row = conn.execute(
                sql.SQL("SELECT value, revision FROM {} WHERE collection = %s AND key = %s").format(
                    self.db.table("views")
                ),
                [collection, key],
            ).fetchone()
        return Doc(row[0], row[1]) if row else None

    def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, Doc]:
        """The documents that exist among ``keys``, in one query."""
        if not keys:
            return {}
        with self.db.connection(f"reading {collection}") as conn:
            rows = conn.execute(
                sql.SQL("SELECT key, value, revision FROM {} WHERE collection = %s AND key = ANY(%s)").format(
                    self.db.table("views")
                ),
                [collection, list(keys)],
            ).fetchall()
        return {key: Doc(value, revision) for key, value, revision in rows}

    def query(
        self,
        collection: str,
        *,
        prefix: str = "",
        where: tuple[str, str | int | bool] | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        """Documents by key prefix and one top-level field's value, ascending by key."""
        clauses = [sql.SQL("collection = %s")]
        params: list[Any] = [collection]
        if prefix:
            end = prefix_end(prefix)
            clauses.append(sql.SQL("key >= %s") if end is None else sql.SQL("key >= %s AND key < %s"))
            params += [prefix] if end is None else [prefix, end]
        if where is not None:
            clauses.append(sql.SQL("value -> %s = %s::jsonb"))
            params += [where[0], orjson.dumps(where[1]).decode()]
        params.append(limit)
        query = sql.SQL("SELECT key, value, revision FROM {} WHERE {} ORDER BY key LIMIT %s").format(
            self.db.table("views"), sql.SQL(" AND ").join(clauses)
        )
        with self.db.connection(f"querying {collection}") as conn:
            rows = conn.execute(query, params).fetchall()
        return [(key, Doc(value, revision)) for key, value, revision in rows]

    def commit(self, projection: str, changes: Sequence[ViewChange], checkpoint: Mapping[str, str]) -> None:
        """Write ``changes`` and the checkpoint in one transaction; a failed condition rolls all back."""
        with self.db.connection(f"committing {projection}") as conn:
            try:
                with conn.transaction():
                    checks: list[tuple[ViewChange, psycopg.Cursor[Any], bool]] = []
                    with conn.pipeline():
                        for change in changes:
                            cur = conn.cursor()
                            checks.append((change, cur, self._write(cur, change)))
                        for key, value in checkpoint.items():
                            conn.execute(self._checkpoint, [projection, key, value])
                    for change, cur, must_touch in checks:
                        if change.expected_revision is None:
                            continue
                        touched = cur.rowcount > 0
                        if touched != must_touch:
                            raise self._conflict(conn, change)
            except psycopg.errors.UniqueViolation as e:  # pragma: no cover - guarded by ON CONFLICT
                raise ConcurrencyError(projection, "absent", -1, str(e)) from e

    def _write(self, cur: psycopg.Cursor[Any], change: ViewChange) -> bool:
        """Queue one change; return whether a conditional one must touch a row (else: must not)."""
        c, k, rev = change.collection, change.key, change.expected_revision
        if change.doc is None:
            if rev is None:
                cur.execute(self._delete, [c, k])
            elif rev == 0:
                cur.execute(self._exists, [c, k])
                return False
            else:
                cur.execute(self._delete_at, [c, k, rev])
            return True
        value = orjson.dumps(change.doc).decode()
        if rev is None:
            cur.execute(self._upsert, [c, k, value])
        elif rev == 0:
            cur.execute(self._insert, [c, k, value])
        else:
            cur.execute(self._update, [value, c, k, rev])
        return True

    def _conflict(self, conn: psycopg.Connection[Any], change: ViewChange) -> ConcurrencyError:
        row = conn.execute(self._exists, [change.collection, change.key]).fetchone()
        return ConcurrencyError(
            f"{change.collection}/{change.key}",
            change.expected_revision,
            int(row[0]) if row else 0,
            "document revision",
        )

    def get_checkpoint(self, projection: str, key: str = "$all") -> str | None:
        """The checkpoint last committed for ``(projection, key)``."""
        with self.db.connection(f"reading the checkpoint of {projection}") as conn:
            row = conn.execute(
                sql.SQL("SELECT value FROM {} WHERE projection = %s AND key = %s").format(self.db.table("checkpoints")),
                [projection, key],
            ).fetchone()
        return str(row[0]) if row else None

    def drop(self, collection: str) -> None:
        """Delete every document of ``collection``."""
        with self.db.connection(f"dropping {collection}") as conn:
            conn.execute(sql.SQL("DELETE FROM {} WHERE collection = %s").format(self.db.table("views")), [collection])

    def drop_checkpoints(self, projection: str) -> None:
        """Forget every checkpoint of ``projection``."""
        with self.db.connection(f"dropping the checkpoints of {projection}") as conn:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE projection = %s").format(self.db.table("checkpoints")), [projection]
            )

    def close(self) -> None:
        """Close the connection pool."""
        self.db.close()
