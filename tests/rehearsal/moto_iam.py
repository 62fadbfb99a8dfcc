"""moto server with IAM enforced the way AWS enforces it for what skyferry calls.

moto checks IAM in server mode once ``INITIAL_NO_AUTH_ACTION_COUNT`` requests have been
served (``POST /moto-api/reset-auth`` with ``0`` turns it on at once): it verifies the
SigV4 signature, finds the caller (an IAM user's ``AKIA`` key, or the ``ASIA`` key of a
session from ``sts:AssumeRole``) and evaluates the caller's inline and attached policies.
Assumed-role sessions are checked against *the role's* policies, so a task running with
the task role's credentials gets ``AccessDenied`` for anything the graph does not grant
(``test_aws.py::test_moto_denies_what_the_task_role_is_not_granted`` proves it).

As shipped, that check differs from AWS in ways that would make the rehearsal prove
nothing (or fail for moto's reasons), so this server replaces moto's authorization step
(the signature and caller lookup stay moto's):

* **Resources.** moto passes ``*`` as the resource for DynamoDB, SNS and Secrets Manager,
  so a policy naming a table, topic or secret ARN never matches.  Here every request is
  authorized on the ARN it touches (the index ARN for a query on an index).
* **Actions.** moto asks for ``dynamodb:TransactWriteItems``, ``sns:PublishBatch``,
  ``sqs:DeleteMessageBatch``; AWS authorizes a transaction per item (``PutItem``,
  ``UpdateItem``, ``DeleteItem``, ``ConditionCheckItem``), ``PublishBatch`` as
  ``sns:Publish`` and a batch as its single action (Service Authorization Reference).
* **Conditions.** moto ignores the conditions of identity policies.  Here they are
  evaluated (``String*``, ``Arn*``, ``Bool``, ``Null``, ``…IfExists``) with the request's
  context: ``s3:prefix`` of a ``ListBucket``; an operator not listed fails closed.
* **A missing object.** S3 answers ``GetObject``/``HeadObject`` of a missing key with 404
  only to a caller allowed ``s3:ListBucket`` on the bucket, otherwise 403 (S3's
  ``HeadObject`` reference); moto always answers 404.

Resource policies (bucket policies, queue policies, key policies) are not evaluated, as in
moto.  Every decision is appended to the JSON-lines log given on the command line: the
caller, the API operation, each IAM action with its resource, and whether it was allowed.

Run as a script: ``python -m tests.rehearsal.moto_iam PORT LOG``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

#: API operation -> the IAM action AWS authorizes it as, where the two differ.
ACTION_OF_OPERATION: dict[str, str] = {
    "sns:PublishBatch": "Publish",
    "sqs:DeleteMessageBatch": "DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
    "sqs:SendMessageBatch": "SendMessage",
}
#: TransactWriteItems member -> the per-item IAM action.
TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
#: Condition operators this evaluator implements (the rest fail closed).
OPERATORS = frozenset(
    {
        "StringEquals",
        "StringNotEquals",
        "StringEqualsIgnoreCase",
        "StringNotEqualsIgnoreCase",
        "StringLike",
        "StringNotLike",
        "ArnEquals",
        "ArnLike",
        "ArnNotEquals",
        "ArnNotLike",
        "Bool",
        "Null",
    }
)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _matches(pattern: str, value: str, ignore_case: bool = False) -> bool:
    """IAM wildcard matching: ``*`` any run of characters, ``?`` one character."""
    if ignore_case:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value, pattern)


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, str]) -> bool:
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    actual = {k.lower(): v for k, v in context.items()}.get(key.lower())
    wanted = [str(v) for v in _as_list(expected)]
    if base == "Null":
        return (actual is None) == (wanted[0].lower() == "true")
    if base not in OPERATORS:
        return False
    if actual is None:
        return if_exists or base.startswith(("StringNot", "ArnNot"))
    negated = base in {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals", "ArnNotLike"}
    if base in {"StringEquals", "StringNotEquals"}:
        hit = actual in wanted
    elif base in {"StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"} or base == "Bool":
        hit = actual.lower() in {w.lower() for w in wanted}
    else:  # StringLike, ArnEquals, ArnLike and their negations: wildcard matches
        hit = any(_matches(w, actual) for w in wanted)
    return not hit if negated else hit


def _statement_applies(statement: Mapping[str, Any], action: str, resource: str, context: Mapping[str, str]) -> bool:
    if "Action" in statement:
        if not any(_matches(a, action, ignore_case=True) for a in _as_list(statement["Action"])):
            return False
    elif any(_matches(a, action, ignore_case=True) for a in _as_list(statement.get("NotAction", []))):
        return False
    if "Resource" in statement:
        if not any(_matches(r, resource) for r in _as_list(statement["Resource"])):
            return False
    elif "NotResource" in statement and any(_matches(r, resource) for r in _as_list(statement["NotResource"])):
        return False
    for operator, block in (statement.get("Condition") or {}).items():
        for key, expected in block.items():
            if not _condition_holds(operator, key, expected, context):
                return False
    return True


def evaluate(documents: Iterable[Mapping[str, Any]], action: str, resource: str, context: Mapping[str, str]) -> bool:
    """Whether identity policies ``documents`` allow ``action`` on ``resource``: an explicit
    deny wins, then any allow, else the implicit deny."""
    allowed = False
    for document in documents:
        for statement in _as_list(document.get("Statement", [])):
            if _statement_applies(statement, action, resource, context):
                if statement.get("Effect") == "Deny":
                    return False
                allowed = True
    return allowed


def required_permissions(
    service: str, operation: str, params: Mapping[str, Any], region: str, account: str
) -> list[tuple[str, str, dict[str, str]]]:
    """What AWS authorizes for one request: ``[(action, resource ARN, condition context)]``."""
    qualified = f"{service}:{operation}"
    action = ACTION_OF_OPERATION.get(qualified, operation)
    if service == "dynamodb":
        table_arn = f"arn:aws:dynamodb:{region}:{account}:table/"
        if operation == "TransactWriteItems":
            found = []
            for item in params.get("TransactItems", []):
                for member, item_action in TRANSACT_ACTIONS.items():
                    if member in item:
                        found.append((f"dynamodb:{item_action}", table_arn + item[member]["TableName"], {}))
            return found
        if operation == "TransactGetItems":
            return [
                ("dynamodb:GetItem", table_arn + i["Get"]["TableName"], {}) for i in params.get("TransactItems", [])
            ]
        if operation in {"BatchGetItem", "BatchWriteItem"}:
            return [(f"dynamodb:{action}", table_arn + table, {}) for table in params.get("RequestItems", {})]
        if "TableName" in params:
            resource = table_arn + params["TableName"]
            if params.get("IndexName"):
                resource += f"/index/{params['IndexName']}"
            return [(f"dynamodb:{action}", resource, {})]
        return [(f"dynamodb:{action}", "*", {})]
    if service == "sns":
        topic = params.get("TopicArn") or params.get("TargetArn")
        if operation == "CreateTopic":
            topic = f"arn:aws:sns:{region}:{account}:{params.get('Name')}"
        return [(f"sns:{action}", topic or "*", {})]
    if service == "sqs":
        name = params.get("QueueName") or str(params.get("QueueUrl") or "").rstrip("/").rsplit("/", 1)[-1]
        return [(f"sqs:{action}", f"arn:aws:sqs:{region}:{account}:{name}" if name else "*", {})]
    if service == "secretsmanager":
        return [(f"secretsmanager:{action}", str(params.get("SecretId") or "*"), {})]
    if service == "sts" and operation == "AssumeRole":
        return [("sts:AssumeRole", str(params.get("RoleArn")), {})]
    return [(qualified if ":" not in action else action, "*", {})]


# -- the server process ------------------------------------------------------------------------


def _install(log_path: str) -> None:  # pragma: no cover - runs in the server process
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.core.exceptions import JsonRESTError
    from moto.iam.access_control import IAMPolicy, S3IAMRequest
    from moto.s3.models import s3_backends
    from moto.secretsmanager.models import secretsmanager_backends
    from moto.utilities.utils import get_partition

    lock = threading.Lock()

    def log(entry: dict[str, Any]) -> None:
        with lock, open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def secret_arn(account: str, region: str, secret_id: str) -> str:
        if secret_id.startswith("arn:"):
            return secret_id
        backend = secretsmanager_backends[account][region]
        secret = backend.secrets.get(secret_id)
        return str(secret.arn) if secret is not None else secret_id

    def authorize(self: Any, iam_request_cls: type, resource: str = "*") -> None:
        if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
            ActionAuthenticatorMixin.request_count += 1
            return
        if self.headers.get("X-Amz-Target") in ActionAuthenticatorMixin.PUBLIC_OPERATIONS:
            return
        from urllib.parse import urlparse

        path = self.raw_path + (f"?{urlparse(self.uri).query}" if urlparse(self.uri).query else "")
        operation = self._get_action()
        request = iam_request_cls(
            account_id=self.current_account,
            method=self.method,
            path=path,
            data=self.data,
            body=self.raw_body,
            headers=self.headers,
            action=operation,
        )
        request.check_signature()
        caller = request._access_key.arn
        documents = [IAMPolicy(p)._policy_json for p in request._access_key.collect_policies()]
        service = request._service
        region = request._region
        if iam_request_cls is S3IAMRequest:
            context: dict[str, str] = {}
            prefix = self.querystring.get("prefix") if hasattr(self, "querystring") else None
            if prefix:
                context["s3:prefix"] = prefix[0]
            needed = [(f"s3:{operation}", resource, context)]
            bucket, _, key = resource.removeprefix("arn:aws:s3:::").partition("/")
            if operation == "GetObject" and key:
                backend = s3_backends[self.current_account][get_partition(region)]
                try:
                    backend.get_object(bucket, key)
                    missing = False
                except Exception:
                    missing = True
                if missing:  # S3: 404 only with s3:ListBucket on the bucket, else 403
                    needed.append(("s3:ListBucket", f"arn:aws:s3:::{bucket}", {}))
        else:
            params: dict[str, Any] = {}
            with contextlib.suppress(Exception):
                params.update(self._get_params())
            with contextlib.suppress(Exception):
                body = json.loads(self.body)
                if isinstance(body, dict):
                    params.update(body)
            if service == "sts" and operation == "GetCallerIdentity":
                return
            needed = required_permissions(service, operation, params, region, self.current_account)
            if service == "secretsmanager":
                needed = [(a, secret_arn(self.current_account, region, r), c) for a, r, c in needed]
        for action, target, context in needed:
            allowed = evaluate(documents, action, target, context)
            log(
                {
                    "caller": caller,
                    "operation": f"{service}:{operation}",
                    "action": action,
                    "resource": target,
                    "context": context,
                    "allowed": allowed,
                }
            )
            if not allowed:
                json_protocol = "X-Amz-Target" in self.headers or "json" in self.headers.get("Content-Type", "")
                if json_protocol:  # DynamoDB, Secrets Manager, SQS: a JSON error as AWS sends it
                    raise JsonRESTError(
                        "AccessDeniedException",
                        f"User: {caller} is not authorized to perform: {action} on resource: {target}",
                    )
                request._raise_access_denied()

    ActionAuthenticatorMixin._authenticate_and_authorize_action = authorize  # type: ignore[method-assign]


def _deterministic_secret_arns() -> None:  # pragma: no cover - runs in the server process
    """Name secrets as :func:`tests.rehearsal.mocks.secret_arn` does, so policies name them."""
    from moto.secretsmanager.utils import SecretsManagerSecretIdentifier

    from tests.rehearsal.mocks import secret_arn

    def generate(self: Any, existing_ids: Any = None, tags: Any = None) -> str:
        return secret_arn(self.region, self.name).replace(":123456789012:", f":{self.account_id}:")

    SecretsManagerSecretIdentifier.generate = generate  # type: ignore[method-assign]


if __name__ == "__main__":  # pragma: no cover
    from tests.services import moto_server

    _install(sys.argv[2])
    _deterministic_secret_arns()
    moto_server._serve(int(sys.argv[1]))
