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
  evaluated as IAM documents them (``String*``, ``Arn*``, ``Bool``, ``Null``, and
  ``…IfExists``: true when the request carries no such key) with the request's context:
  ``s3:prefix`` of a ``ListBucket``, and ``aws:SecureTransport`` (:data:`GLOBAL_CONTEXT`);
  an operator not listed (``ForAnyValue:``, numeric, date) fails closed.
* **Bucket policies.** moto applies a bucket policy to object requests before any IAM
  check, blind to its conditions and principals, so a ``Deny`` of plain HTTP
  (``aws:SecureTransport`` ``false``) refuses every ``GetObject``, ``HeadObject`` and
  ``PutObject``.  Here that check is off, and the bucket's policy is evaluated with the
  caller's identity policies as S3 does for a caller of the bucket's own account: an
  explicit ``Deny`` in either refuses, else an ``Allow`` in either grants; a bucket-policy
  statement counts only where its ``Principal`` names the caller (``*``, the session's
  role or user; an account principal only for a ``Deny``).
* **A missing object.** S3 answers ``GetObject``/``HeadObject`` of a missing key with 404
  only to a caller allowed ``s3:ListBucket`` on the bucket, otherwise 403 (S3's
  ``HeadObject`` reference); moto always answers 404.

Queue and key policies are not evaluated, as in moto.  Every decision is appended to the
JSON-lines log given on the command line: the caller, the API operation, each IAM action
with its resource and context, and whether it was allowed.

Run as a script: ``python -m tests.rehearsal.moto_iam PORT LOG``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

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
#: The context every request carries: each SDK call goes to the service's HTTPS endpoint (the
#: stacks name no endpoint, ``test_aws`` checks it); moto's plain HTTP is the rehearsal's rewrite.
GLOBAL_CONTEXT: Mapping[str, str] = {"aws:SecureTransport": "true"}
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


def _principal_matches(principal: Any, caller: Caller, effect: str) -> bool:
    """Whether a resource policy's ``Principal`` names ``caller`` (see the module docstring)."""
    if principal == "*":
        return True
    if not isinstance(principal, Mapping):
        return False
    for named in _as_list(principal.get("AWS", [])):
        if named == "*" or named in caller.arns:
            return True
        if named in {caller.account, f"arn:aws:iam::{caller.account}:root"} and effect == "Deny":
            return True  # an account principal grants nothing by itself, but denies all of the account
    return False


def _statement_applies(
    statement: Mapping[str, Any],
    action: str,
    resource: str,
    context: Mapping[str, str],
    caller: Caller | None = None,
) -> bool:
    if caller is not None:  # a resource policy: the statement must name the caller
        effect = str(statement.get("Effect"))
        if "Principal" in statement:
            if not _principal_matches(statement["Principal"], caller, effect):
                return False
        elif "NotPrincipal" in statement:
            if _principal_matches(statement["NotPrincipal"], caller, effect):
                return False
        else:
            return False
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


@dataclass(frozen=True)
class Caller:
    """Who makes a request, as a resource policy's ``Principal`` can name it."""

    account: str
    arns: frozenset[str]

    @classmethod
    def of(cls, arn: str) -> Caller:
        """The caller of ``arn``: an assumed-role session is also named by its role's ARN."""
        account = arn.split(":")[4]
        arns = {arn}
        if ":assumed-role/" in arn:
            role = arn.split(":assumed-role/", 1)[1].split("/", 1)[0]
            arns.add(f"arn:aws:iam::{account}:role/{role}")
        return cls(account, frozenset(arns))


def decide(
    documents: Iterable[Mapping[str, Any]],
    action: str,
    resource: str,
    context: Mapping[str, str],
    caller: Caller | None = None,
) -> Literal["Allow", "Deny"] | None:
    """What ``documents`` say about ``action`` on ``resource``: ``Deny`` if a statement denies
    it, else ``Allow`` if one allows it, else ``None``.  With ``caller`` they are resource
    policies, whose statements count only for the principals they name."""
    decision: Literal["Allow", "Deny"] | None = None
    for document in documents:
        for statement in _as_list(document.get("Statement", [])):
            if _statement_applies(statement, action, resource, {**GLOBAL_CONTEXT, **context}, caller):
                if statement.get("Effect") == "Deny":
                    return "Deny"
                decision = "Allow"
    return decision


def evaluate(
    documents: Iterable[Mapping[str, Any]],
    action: str,
    resource: str,
    context: Mapping[str, str],
    resource_policies: Iterable[Mapping[str, Any]] = (),
    caller: Caller | None = None,
) -> bool:
    """Whether identity policies ``documents`` (and, for a caller of the resource's own
    account, its ``resource_policies``) allow ``action`` on ``resource``: an explicit deny in
    either wins, then an allow in either, else the implicit deny."""
    decisions = {decide(documents, action, resource, context)}
    if caller is not None:
        decisions.add(decide(resource_policies, action, resource, context, caller))
    return "Deny" not in decisions and "Allow" in decisions


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
    from moto.iam.access_control import IAMPolicy, PermissionResult, S3IAMRequest
    from moto.s3.models import FakeBucket, s3_backends
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
        bucket_policies: list[dict[str, Any]] = []
        if iam_request_cls is S3IAMRequest:
            context: dict[str, str] = {}
            prefix = self.querystring.get("prefix") if hasattr(self, "querystring") else None
            if prefix:
                context["s3:prefix"] = prefix[0]
            needed = [(f"s3:{operation}", resource, context)]
            bucket, _, key = resource.removeprefix("arn:aws:s3:::").partition("/")
            backend = s3_backends[self.current_account][get_partition(region)]
            with contextlib.suppress(Exception):
                policy = backend.get_bucket(bucket).policy
                if policy:
                    bucket_policies.append(json.loads(policy))
            if operation == "GetObject" and key:
                try:
                    missing = backend.get_object(bucket, key) is None  # moto: None for a missing key
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
        who = Caller.of(caller) if iam_request_cls is S3IAMRequest else None
        for action, target, context in needed:
            allowed = evaluate(documents, action, target, context, bucket_policies, who)
            log(
                {
                    "caller": caller,
                    "operation": f"{service}:{operation}",
                    "action": action,
                    "resource": target,
                    "context": {**GLOBAL_CONTEXT, **context},
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

    def no_bucket_check(self: Any, action: str, resource: str) -> PermissionResult:
        return PermissionResult.NEUTRAL  # the bucket policy is evaluated by authorize, conditions included

    ActionAuthenticatorMixin._authenticate_and_authorize_action = authorize  # type: ignore[method-assign]
    FakeBucket.get_permission = no_bucket_check  # type: ignore[method-assign]


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
