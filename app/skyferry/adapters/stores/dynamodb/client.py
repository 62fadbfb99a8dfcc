"""The DynamoDB client of the ``dynamodb://`` stores: URL options, retries, batches and transactions."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, Final
from urllib.parse import quote

from skyferry.adapters import aws
from skyferry.core.errors import ConfigurationError, TransientError

_CONFLICT_ATTEMPTS: Final = 64


def _cancellation_codes(error: Exception) -> list[str]:
    reasons = getattr(error, "response", {}).get("CancellationReasons", [])
    return [str(reason.get("Code", "None")) for reason in reasons]


class _Table:
    """The client, table name and retry policy shared by the event and view stores."""

    def __init__(self, table: str, client: Any | None, options: aws.AwsOptions, url: str) -> None:
        if not table:
            raise ConfigurationError("dynamodb:// URL names no table: dynamodb://TABLE?region=...")
        self.name = table
        self.options = options
        self.url = url
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.make_client("dynamodb", self.options)
        return self._client

    def call(self, operation: str, **kwargs: Any) -> Any:
        """Call ``operation`` on the table with retries and error translation."""
        what = f"DynamoDB table {self.name!r} ({operation})"
        try:
            return aws.call(getattr(self.client, operation), what, self.options.attempts, TableName=self.name, **kwargs)
        except ConfigurationError as e:
            if aws.error_code(e.__cause__ or e) == "ResourceNotFoundException":
                raise ConfigurationError(
                    f"DynamoDB table {self.name!r} does not exist in region "
                    f"{self.client.meta.region_name}: create it (pulumi up) or fix the URL"
                ) from e.__cause__
            raise

    def raw(self, operation: str, **kwargs: Any) -> Any:
        """Call an operation that names its tables itself (transactions, batches)."""
        what = f"DynamoDB table {self.name!r} ({operation})"
        return aws.call(getattr(self.client, operation), what, self.options.attempts, **kwargs)

    def query_pages(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Every item of a ``Query``, page by page (``Limit`` is per page)."""
        while True:
            page = self.call("query", **kwargs)
            yield from page.get("Items", [])
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last

    def batch_get(self, keys: Sequence[dict[str, Any]], projection: str | None = None) -> list[dict[str, Any]]:
        """``BatchGetItem`` with consistent reads, 100 keys per request, unprocessed keys retried."""
        items: list[dict[str, Any]] = []
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {"Keys": list(keys[start : start + 100]), "ConsistentRead": True}
            if projection:
                request["ProjectionExpression"] = projection
            pending: dict[str, Any] = {self.name: request}
            attempt = 0
            while pending:
                response = self.raw("batch_get_item", RequestItems=pending)
                items.extend(response.get("Responses", {}).get(self.name, []))
                pending = response.get("UnprocessedKeys") or {}
                if pending:
                    attempt += 1
                    if attempt >= self.options.attempts:
                        raise TransientError(f"DynamoDB table {self.name!r}: BatchGetItem kept throttling")
                    time.sleep(aws.backoff(attempt))
        return items

    def batch_delete(self, keys: Sequence[dict[str, Any]]) -> None:
        """``BatchWriteItem`` deletes, 25 per request, unprocessed items retried."""
        for start in range(0, len(keys), 25):
            pending: dict[str, Any] = {self.name: [{"DeleteRequest": {"Key": key}} for key in keys[start : start + 25]]}
            attempt = 0
            while pending:
                response = self.raw("batch_write_item", RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if pending:
                    attempt += 1
                    if attempt >= self.options.attempts:
                        raise TransientError(f"DynamoDB table {self.name!r}: BatchWriteItem kept throttling")
                    time.sleep(aws.backoff(attempt))

    def transact(self, items: list[dict[str, Any]]) -> Exception | None:
        """Run ``TransactWriteItems``; return the cancellation (with its reasons) or ``None``."""
        from botocore.exceptions import ClientError

        try:
            self.raw("transact_write_items", TransactItems=items)
        except ClientError as e:
            if aws.error_code(e) == "TransactionCanceledException":
                return e
            raise
        return None


def _parse(url: str) -> tuple[str, aws.AwsOptions]:
    netloc, path, options = aws.parse_options(url)
    table = netloc or path
    unknown = sorted(options.extra or {})
    if unknown:
        raise ConfigurationError(
            f"dynamodb:// URL has unknown options {unknown}; known: region, endpoint, profile, attempts"
        )
    return table, options


def _redacted(table: str, options: aws.AwsOptions) -> str:
    query = "&".join(
        f"{k}={quote(v, safe=':/')}" for k, v in (("region", options.region), ("endpoint", options.endpoint)) if v
    )
    return f"dynamodb://{table}" + (f"?{query}" if query else "")
