"""The gs:// archive on a Cloud Storage emulator (``gcp-storage-emulator``) beyond the conformance suite:
bad URLs and a missing bucket."""

from __future__ import annotations

import uuid

import pytest

from skyferry.adapters.archives.gcs import GCSArchive
from skyferry.core.errors import ConfigurationError
from tests.services import gcs as gcs_service


@pytest.mark.parametrize("url", ["gs:///prefix", "gs://bucket?region=x"])
def test_malformed_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        GCSArchive.from_url(url)


def test_a_missing_bucket_is_a_configuration_error() -> None:
    endpoint = gcs_service.endpoint()
    archive = GCSArchive.from_url(f"gs://absent-{uuid.uuid4().hex[:12]}/x?endpoint={endpoint}")
    with pytest.raises(ConfigurationError, match="does not exist"):
        archive.get("manifest.json")
    with pytest.raises(ConfigurationError):
        archive.put("manifest.json", b"{}")
