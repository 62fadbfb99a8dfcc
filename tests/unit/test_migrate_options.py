"""The archive an export writes to without ``--to``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from skyferry.migrate.options import default_archive, under


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("./exports", "./exports/x"),
        ("/var/lib/skyferry/archive/", "/var/lib/skyferry/archive/x"),
        ("file:///var/lib/skyferry/archive", "file:///var/lib/skyferry/archive/x"),
        ("file:///", "file:///x"),
        ("s3://bucket", "s3://bucket/x"),
        ("s3://bucket/exports?region=eu-west-1", "s3://bucket/exports/x?region=eu-west-1"),
        ("az://account/container/?endpoint=http://127.0.0.1:1", "az://account/container/x?endpoint=http://127.0.0.1:1"),
        ("gs://bucket/prefix", "gs://bucket/prefix/x"),
    ],
)
def test_a_name_goes_under_the_path_and_before_the_query(base: str, expected: str) -> None:
    assert under(base, "x") == expected


def test_the_default_is_a_new_archive_named_by_the_utc_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYFERRY_ARCHIVE_URL", "s3://b/exports?region=r")
    moment = datetime(2026, 12, 6, 12, 45, 1, 999_999, tzinfo=UTC)
    assert default_archive(moment) == "s3://b/exports/export-20261206T124501Z?region=r"
    monkeypatch.delenv("SKYFERRY_ARCHIVE_URL")
    assert default_archive(moment) == "./exports/export-20261206T124501Z"
