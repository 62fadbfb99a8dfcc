"""The aws stack rehearsed: moto with IAM enforced, the ECS task definitions run as ECS runs them.

Every workload call is authorized by moto against the role the task definition names,
with the graph's policies attached; each decision is logged (``aws-decisions.jsonl`` in
the rehearsal's directory).  See :mod:`tests.rehearsal.aws` for what ECS's part is and
:mod:`tests.rehearsal.moto_iam` for how moto's IAM check is made to match AWS.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest

from tests.rehearsal import contracts
from tests.rehearsal.aws import IamMoto, Provisioned, assume, role_name
from tests.rehearsal.harness import Rehearsal
from tests.rehearsal.mocks import AWS_ACCOUNT
from tests.rehearsal.stack import Deployment, deploy

API = "ecs:skyferry-api/api"
WORKER = "ecs:skyferry-worker/worker"
ARN = r"arn:aws:[a-z0-9-]+:(eu-west-1)?:(123456789012)?:.+"


def _moto(aws: Rehearsal) -> tuple[IamMoto, Provisioned, str]:
    return aws.extra["moto"], aws.extra["provisioned"], aws.deployment.config["aws:region"]


def test_pulumi_accepts_the_stack_config(aws: Rehearsal) -> None:
    contracts.pulumi_accepts(aws.deployment)


def test_identifiers_are_realistic(aws: Rehearsal) -> None:
    checked = contracts.identifiers_are_realistic(
        aws.deployment,
        {
            "arn": ARN,
            "dnsName": r"[a-z0-9-]+\.eu-west-1\.elb\.amazonaws\.com",
            "url": r"https://sqs\.eu-west-1\.amazonaws\.com/123456789012/.+",
        },
    )
    assert checked >= 20


def test_data_resources_are_the_graphs(aws: Rehearsal) -> None:
    """What moto holds is what the graph declares: table and index, topic, queues, subscriptions, bucket, secret."""
    moto, provisioned, region = _moto(aws)
    admin = provisioned.admin
    deployment = aws.deployment
    [table] = deployment.nodes("aws:dynamodb/table:Table")
    described = moto.client("dynamodb", region, admin).describe_table(TableName=table.inputs["name"])["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in described["KeySchema"]} == {
        table.inputs["hashKey"]: "HASH",
        table.inputs["rangeKey"]: "RANGE",
    }
    assert {i["IndexName"] for i in described.get("GlobalSecondaryIndexes", [])} == {
        i["name"] for i in table.inputs["globalSecondaryIndexes"]
    }
    assert described["BillingModeSummary"]["BillingMode"] == table.inputs["billingMode"]
    sqs = moto.client("sqs", region, admin)
    queues = deployment.nodes("aws:sqs/queue:Queue")
    for queue in queues:
        attributes = sqs.get_queue_attributes(
            QueueUrl=provisioned.queue_urls[queue.inputs["name"]], AttributeNames=["All"]
        )["Attributes"]
        assert attributes["FifoQueue"] == "true", queue.name
        assert int(attributes["MessageRetentionPeriod"]) == queue.inputs["messageRetentionSeconds"], queue.name
        if "redrivePolicy" in queue.inputs:
            assert json.loads(attributes["RedrivePolicy"]) == json.loads(queue.inputs["redrivePolicy"]), queue.name
            assert attributes["DeduplicationScope"] == queue.inputs["deduplicationScope"], queue.name
            assert int(attributes["VisibilityTimeout"]) == queue.inputs["visibilityTimeoutSeconds"], queue.name
    [topic] = deployment.nodes("aws:sns/topic:Topic")
    sns = moto.client("sns", region, admin)
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic.outputs["arn"])["Subscriptions"]
    declared = {s.inputs["endpoint"] for s in deployment.nodes("aws:sns/topicSubscription:TopicSubscription")}
    assert {s["Endpoint"] for s in subscriptions} == declared
    for subscription in subscriptions:
        raw = sns.get_subscription_attributes(SubscriptionArn=subscription["SubscriptionArn"])["Attributes"]
        assert raw.get("RawMessageDelivery") == "true", subscription["Endpoint"]
    [bucket] = deployment.nodes("aws:s3/bucket:Bucket")
    s3 = moto.client("s3", region, admin)
    assert s3.get_bucket_versioning(Bucket=bucket.outputs["bucket"])["Status"] == "Enabled"
    rule = s3.get_bucket_encryption(Bucket=bucket.outputs["bucket"])["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"


def test_roles_trust_ecs_tasks(aws: Rehearsal) -> None:
    """ECS can assume the task and execution roles only if their trust policy names ecs-tasks.amazonaws.com."""
    for definition in aws.deployment.nodes("aws:ecs/taskDefinition:TaskDefinition"):
        for key in ("taskRoleArn", "executionRoleArn"):
            role = aws.deployment.by_output("arn", definition.inputs[key])
            assert role is not None, f"{definition.name}.{key} names no role of the graph"
            trust = json.loads(role.inputs["assumeRolePolicy"])
            principals = [
                s.get("Principal", {}).get("Service") for s in trust["Statement"] if s.get("Effect") == "Allow"
            ]
            assert "ecs-tasks.amazonaws.com" in principals, f"{role.name} does not trust ECS tasks"


def test_workloads_run_the_graphs_command_and_environment(aws: Rehearsal) -> None:
    assert set(aws.launches) == {API, WORKER}
    assert aws.launches[API].workload.args == ("serve",)
    assert aws.launches[WORKER].workload.args == ("worker",)
    contracts.workloads_get_the_graphs_environment(aws)
    for name, workload in aws.workloads.items():
        # the SDKs use the services' HTTPS endpoints (what moto_iam takes aws:SecureTransport from)
        assert not [k for k in workload.env if k.startswith("AWS_ENDPOINT_URL")], name
        assert not [v for v in workload.env.values() if "endpoint" in v.lower() or "http://" in v], name
    [version] = aws.deployment.nodes("aws:secretsmanager/secretVersion:SecretVersion")
    contracts.secrets_resolved(aws, {"SKYFERRY_API_TOKEN": version.inputs["secretString"]})


def test_api_passes_the_load_balancer_health_check(aws: Rehearsal) -> None:
    assert [p.kind for p in aws.workloads[API].probes] == ["http"]
    contracts.probes_pass(aws, API)


def test_worker_keeps_running(aws: Rehearsal) -> None:
    """The worker's container health check (``skyferry alive`` on its heartbeat, in the task's /tmp) passes."""
    worker = aws.workloads[WORKER]
    assert [(p.kind, p.command) for p in worker.probes] == [("exec", ("skyferry", "alive", "--max-age", "120"))]
    assert worker.volumes == {"/tmp": "task:skyferry-worker:tmp"}
    assert worker.env["SKYFERRY_HEARTBEAT_FILE"].startswith("/tmp/")
    contracts.keeps_running(aws, WORKER)
    contracts.probes_pass(aws, WORKER)


def test_a_hung_worker_fails_its_health_check(aws: Rehearsal) -> None:
    contracts.liveness_catches_a_hang(aws, WORKER)


def test_end_to_end_through_the_api(aws: Rehearsal) -> None:
    contracts.end_to_end(aws)


def test_store_fed_worker_publishes_nothing(aws: Rehearsal) -> None:
    """The stack feeds its read models from the store: nobody reads the queues, so nothing is sent there."""
    contracts.end_to_end(aws)
    calls = [c for c in aws.store_fed_calls() if c["caller"].endswith("/ecs-task")]
    assert calls, "moto recorded no call of the workloads"
    assert not [c for c in calls if c["action"] == "sns:Publish"]


def test_transient_failures_dead_letter_no_healthy_message(aws: Rehearsal, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack's queues with the app's consumer, as the task role: a message that fails four times
    before it succeeds must not cost the message behind it its retries (it fails once, transiently).

    ``wait=0&backoff=0`` only make the consumer poll and retry at once (the test's speed);
    receive counts and the redrive policy are the stack's.  It runs before the broker-fed
    worker starts (which would compete for the group); the copies the topic fans out to the
    other groups' queues are the worker's to skip or dead-letter.
    """
    import time
    import uuid

    from skyferry.adapters.brokers.sns_sqs import SnsSqsBroker
    from skyferry.core.ports import Message
    from skyferry.ledger import MAX_DELIVERIES

    moto, provisioned, region = _moto(aws)
    task = assume(moto.client("sts", region, provisioned.admin), aws.workloads[WORKER].identity, session="fifo-check")
    for key, value in {**task.env(), "AWS_ENDPOINT_URL": moto.endpoint}.items():
        monkeypatch.setenv(key, value)
    broker = SnsSqsBroker.from_url(aws.workload_env(WORKER)["SKYFERRY_BROKER_URL"] + "&wait=0&backoff=0")
    run = uuid.uuid4().hex[:8]
    key, ids = f"fifo-{run}", [f"m{i}-{run}" for i in range(3)]
    failures = {ids[0]: 4, ids[1]: 1}
    handled: list[str] = []
    given_up: list[str] = []  # failed at the consumer's last attempt: dead-lettered by it
    limit = MAX_DELIVERIES  # what the worker subscribes with

    def handler(message: Message) -> None:
        if message.key != key:
            return  # what the relay published during the run
        if failures.get(message.id, 0) > 0:
            failures[message.id] -= 1
            if message.delivery_attempt >= limit:
                given_up.append(message.id)
            raise RuntimeError("a transient failure")
        handled.append(message.id)

    try:
        broker.publish([Message(id=i, key=key, body=b"{}", attributes={"type": "Test"}) for i in ids])
        subscription = broker.subscribe("history", handler, max_deliveries=limit)
        deadline = time.monotonic() + 30
        while len(handled) + len(given_up) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.1)
        subscription.close()
        dead = {m.id for m in broker.dead_letters("history")}
    finally:
        broker.close()
    assert not dead & set(ids), f"dead-lettered: {sorted(dead & set(ids))}"
    assert sorted(handled) == sorted(ids)


def test_broker_fed_end_to_end_through_the_stacks_queues(aws: Rehearsal) -> None:
    contracts.broker_fed_end_to_end(aws, WORKER)
    since = aws.calls()[aws.extra["broker_fed_calls"] :]
    used = {c["action"] for c in since if c["allowed"]}
    assert {"sns:Publish", "sqs:ReceiveMessage", "sqs:DeleteMessage"} <= used, used


def test_every_call_is_allowed_to_the_role_the_graph_declares(aws: Rehearsal) -> None:
    """Each workload call was authorized against its task role; the secret against the execution role."""
    contracts.end_to_end(aws)
    contracts.broker_fed_end_to_end(aws, WORKER)
    roles = {role_name(w.identity) for w in aws.workloads.values()}
    executions = {
        role_name(n.inputs["executionRoleArn"]) for n in aws.deployment.nodes("aws:ecs/taskDefinition:TaskDefinition")
    }
    calls = [
        c for c in aws.calls() if c["caller"].endswith("/ecs-task") and c["caller"].split("/")[1] in roles | executions
    ]
    assert calls, "moto recorded no call of the workloads"
    denied = [c for c in calls if not c["allowed"]]
    assert not denied, "AccessDenied:\n" + "\n".join(json.dumps(c) for c in denied)
    for call in calls:
        session_role = call["caller"].split("/")[1]
        allowed_roles = executions if call["action"].startswith("secretsmanager:") else roles
        assert session_role in allowed_roles, f"{call['action']} made as {session_role}"
    actions = Counter(c["action"] for c in calls)
    assert {
        "dynamodb:PutItem",
        "dynamodb:Query",
        "sns:Publish",
        "sqs:ReceiveMessage",
        "secretsmanager:GetSecretValue",
    } <= set(actions)


def test_moto_denies_what_the_task_role_is_not_granted(aws: Rehearsal) -> None:
    """The negative proof: the task role's session is refused everything its policy lacks."""
    from botocore.exceptions import ClientError

    moto, provisioned, region = _moto(aws)
    task_arn = aws.workloads[API].identity
    session = assume(moto.client("sts", region, provisioned.admin), task_arn, session="negative-proof")
    table = aws.deployment.one("aws:dynamodb/table:Table").inputs["name"]
    bucket = aws.deployment.one("aws:s3/bucket:Bucket").outputs["bucket"]
    secret = aws.deployment.one("aws:secretsmanager/secret:Secret").outputs["arn"]
    dynamo = moto.client("dynamodb", region, session)
    dynamo.get_item(TableName=table, Key={"pk": {"S": "nothing"}, "sk": {"S": "here"}})  # granted
    refused = {
        "dynamodb:DeleteTable": lambda: dynamo.delete_table(TableName=table),
        "dynamodb:Scan": lambda: dynamo.scan(TableName=table),
        "s3:DeleteBucket": lambda: moto.client("s3", region, session).delete_bucket(Bucket=bucket),
        "secretsmanager:GetSecretValue": lambda: moto.client("secretsmanager", region, session).get_secret_value(
            SecretId=secret
        ),
        "sns:CreateTopic": lambda: moto.client("sns", region, session).create_topic(Name="intruder"),
    }
    for action, call in refused.items():
        with pytest.raises(ClientError) as refusal:
            call()
        assert refusal.value.response["Error"]["Code"] in {"AccessDenied", "AccessDeniedException"}, action


def test_a_workload_without_the_graphs_policy_fails(aws: Rehearsal) -> None:
    """The worker, with the graph's environment but a role without the data policy, stops on AccessDenied."""
    moto, provisioned, region = _moto(aws)
    iam = moto.client("iam", region, provisioned.admin)
    trust = aws.deployment.by_output("arn", aws.workloads[WORKER].identity).inputs["assumeRolePolicy"]
    bare = iam.create_role(RoleName="rehearsal-bare", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    provisioned.roles["rehearsal-bare"] = assume(moto.client("sts", region, provisioned.admin), bare, "ecs-task")
    workload = replace(aws.workloads[WORKER], identity=bare, name="ecs:bare-worker")
    launch = aws.launch(workload)
    completed = aws.launcher.run(launch, ["skyferry", "worker", "--once"], aws.workdir / "bare-worker.log", timeout=120)
    assert completed.returncode != 0, completed.stdout
    assert "AccessDenied" in completed.stdout + completed.stderr
    denied = [c for c in aws.calls() if "rehearsal-bare" in c["caller"] and not c["allowed"]]
    assert denied, "moto recorded no refusal of the bare role"
    assert denied[0]["action"].startswith("dynamodb:")


def test_export_then_import_as_the_task_role(aws: Rehearsal) -> None:
    reports = contracts.export_then_import(aws, API)
    assert reports["export"]["archive"].startswith("s3://")
    task = role_name(aws.workloads[API].identity)
    decided = [c for c in aws.calls() if c["action"].startswith("s3:") and c["caller"].endswith(f"/{task}/ecs-task")]
    assert all(c["allowed"] for c in decided), [c for c in decided if not c["allowed"]]
    # the fresh export's HeadObject of its missing manifest: 404 because s3:ListBucket is granted
    assert {"s3:PutObject", "s3:GetObject", "s3:ListBucket"} <= {c["action"] for c in decided}
    assert any(c["operation"] == "s3:GetObject" and c["action"] == "s3:ListBucket" for c in decided)


def test_a_missing_object_is_a_403_without_list_bucket(aws: Rehearsal) -> None:
    """S3's rule as moto_iam plays it: a HeadObject of a missing key is a 404 only for a caller
    allowed ``s3:ListBucket`` on a request without ``s3:prefix``.  The graph's task policy
    allows it (``StringLikeIfExists``); the same policy with a plain ``StringLike`` gets 403."""
    from botocore.exceptions import ClientError

    moto, provisioned, region = _moto(aws)
    bucket = aws.deployment.one("aws:s3/bucket:Bucket").outputs["bucket"]
    task = aws.deployment.by_output("arn", aws.workloads[API].identity)
    assert task is not None
    [policy] = [
        n.inputs["policy"]
        for n in aws.deployment.nodes("aws:iam/rolePolicy:RolePolicy")
        if n.inputs["role"] == task.outputs["name"]
    ]
    assert "StringLikeIfExists" in policy
    iam = moto.client("iam", region, provisioned.admin)
    strict = iam.create_role(RoleName="rehearsal-strict-list", AssumeRolePolicyDocument=task.inputs["assumeRolePolicy"])
    iam.put_role_policy(
        RoleName="rehearsal-strict-list",
        PolicyName="task",
        PolicyDocument=policy.replace("StringLikeIfExists", "StringLike"),
    )
    sts = moto.client("sts", region, provisioned.admin)
    sessions = {
        "graph": assume(sts, task.outputs["arn"], "head-check"),
        "strict": assume(sts, strict["Role"]["Arn"], "head-check"),
    }
    codes = {}
    for which, session in sessions.items():
        with pytest.raises(ClientError) as missing:
            moto.client("s3", region, session).head_object(Bucket=bucket, Key="exports/no-such-run/manifest.json")
        codes[which] = missing.value.response["Error"]["Code"]
    assert codes == {"graph": "404", "strict": "403"}


def test_the_bucket_policy_refuses_plain_http(aws: Rehearsal) -> None:
    """moto_iam evaluates the bucket policy with its conditions: the graph's TLS-only deny
    refuses the task role's own archive reads over plain HTTP, and lets them through over TLS."""
    from tests.rehearsal.moto_iam import Caller, evaluate

    [bucket_policy] = [json.loads(n.inputs["policy"]) for n in aws.deployment.nodes("aws:s3/bucketPolicy:BucketPolicy")]
    bucket = aws.deployment.one("aws:s3/bucket:Bucket").outputs["arn"]
    task = aws.deployment.by_output("arn", aws.workloads[API].identity)
    assert task is not None
    identity = [
        json.loads(n.inputs["policy"])
        for n in aws.deployment.nodes("aws:iam/rolePolicy:RolePolicy")
        if n.inputs["role"] == task.outputs["name"]
    ]
    caller = Caller.of(f"arn:aws:sts::{AWS_ACCOUNT}:assumed-role/{task.outputs['name']}/ecs-task")
    read = ("s3:GetObject", f"{bucket}/exports/run/manifest.json")
    assert evaluate(identity, *read, {}, [bucket_policy], caller)
    assert not evaluate(identity, *read, {"aws:SecureTransport": "false"}, [bucket_policy], caller)
    assert evaluate(identity, *read, {"aws:SecureTransport": "false"}, [], caller), "the identity policy allows it"


def test_public_api_endpoint_uses_tls(aws: Rehearsal) -> None:
    assert aws.deployment.graph.outputs["api_url"].value.startswith("https://")
    plain = [
        n.name
        for n in aws.deployment.nodes("aws:lb/listener:Listener")
        if n.inputs.get("protocol") == "HTTP" and n.inputs["defaultActions"][0]["type"] == "forward"
    ]
    assert not plain, f"listeners forwarding plain HTTP: {plain}"


def test_an_api_token_is_required_or_optional_for_real() -> None:
    def references(variant: Deployment) -> dict[str, tuple[set[str], bool]]:
        filled = {n.inputs["secretId"] for n in variant.nodes("aws:secretsmanager/secretVersion:SecretVersion")}
        found = {}
        for definition in variant.nodes("aws:ecs/taskDefinition:TaskDefinition"):
            for container in json.loads(definition.inputs["containerDefinitions"]):
                unfilled = {s["name"] for s in container.get("secrets", []) if s["valueFrom"] not in filled}
                names = {e["name"] for e in container.get("environment", [])} | {
                    s["name"] for s in container.get("secrets", [])
                }
                token = "SKYFERRY_API_TOKEN" in names - unfilled
                found[definition.inputs["family"]] = (unfilled, container.get("command") == ["serve"] and not token)
        return found

    contracts.api_token_is_optional_or_refused("aws", references)


def test_queue_redrive_is_the_backstop_of_the_apps_delivery_limit(aws: Rehearsal) -> None:
    """The app dead-letters a message after ``MAX_DELIVERIES`` attempts of its handler; the
    queues' redrive is the backstop for a consumer that crashes on it, derived from that one
    number (``redrive_receive_count``), and no stack setting can make them disagree."""
    from providers.base import StackConfigError
    from skyferry.adapters.brokers.sns_sqs import redrive_receive_count
    from skyferry.ledger import CONSUMER_GROUPS, MAX_DELIVERIES

    _, provisioned, region = _moto(aws)
    sqs = aws.extra["moto"].client("sqs", region, provisioned.admin)
    redriven = 0
    for queue in aws.deployment.nodes("aws:sqs/queue:Queue"):
        if "redrivePolicy" not in queue.inputs:
            continue
        attributes = sqs.get_queue_attributes(
            QueueUrl=provisioned.queue_urls[queue.inputs["name"]], AttributeNames=["RedrivePolicy"]
        )["Attributes"]
        count = json.loads(attributes["RedrivePolicy"])["maxReceiveCount"]
        assert count == redrive_receive_count(MAX_DELIVERIES) > MAX_DELIVERIES, (
            f"{queue.inputs['name']}: redrive after {count} receives, the app's limit is {MAX_DELIVERIES} deliveries"
        )
        redriven += 1
    assert redriven == len(CONSUMER_GROUPS)
    with pytest.raises(StackConfigError) as refused:
        deploy("aws", overrides={"skyferry:aws": {"maxDeliveries": 3}})
    assert refused.value.key == "skyferry:aws.maxDeliveries"


def test_broker_retention_is_bounded(aws: Rehearsal) -> None:
    """In store-fed mode nobody reads the queues: what the relay publishes must expire (SQS: at most 14 days)."""
    _, provisioned, region = _moto(aws)
    moto = aws.extra["moto"]
    sqs = moto.client("sqs", region, provisioned.admin)
    for name, url in provisioned.queue_urls.items():
        retention = int(
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["MessageRetentionPeriod"])["Attributes"][
                "MessageRetentionPeriod"
            ]
        )
        assert 0 < retention <= 14 * 24 * 3600, name
