"""The az:// archive on Azurite, beyond the conformance suite: configuration errors and big objects."""

from __future__ import annotations

import pytest

from skyferry.adapters.archives.blob import BlobArchive
from skyferry.core.errors import ConfigurationError
from tests.services import blob as service


def test_a_missing_container_is_a_configuration_error_naming_it() -> None:
    service.endpoint()
    archive = BlobArchive.from_url(service.url_for("no-such-container"))
    with pytest.raises(ConfigurationError, match="'no-such-container'"):
        archive.put("a", b"x")
    with pytest.raises(ConfigurationError, match="'no-such-container'"):
        archive.get("a")


def test_a_large_object_is_uploaded_in_blocks_and_read_back_whole() -> None:
    with service.fresh_container() as container:
        archive = BlobArchive.from_url(service.url_for(container))
        data = bytes(range(256)) * (80 * 1024)  # 20 MiB: staged blocks, committed at once
        archive.put("chunks/big.bin", data)
        assert archive.get("chunks/big.bin") == data
        assert archive.list("chunks/") == ["chunks/big.bin"]


def test_urls_name_what_is_missing_and_hide_the_key() -> None:
    with pytest.raises(ConfigurationError, match="account and a container"):
        BlobArchive.from_url("az://account")
    with pytest.raises(ConfigurationError, match="unknown options"):
        BlobArchive.from_url("az://account/c?colour=blue")
    archive = BlobArchive.from_url("az://account/c/p?key=c2VjcmV0&endpoint=http://127.0.0.1:1/account")
    assert "c2VjcmV0" not in archive.url
    assert archive.endpoint == "http://127.0.0.1:1/account"
