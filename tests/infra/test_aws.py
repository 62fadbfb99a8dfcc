"""The aws target under mocks: the resource graph, the outputs, every policy, least privilege.

The least-privilege test drives the three AWS adapters against moto server with botocore
hooks recording every API operation they call, maps the operations to IAM actions with the
adapters' own tables, and compares that set with the task role policy the graph declares.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from providers import policies
from providers.aws.compute import fargate_size
from providers.aws.identity import task_role_policy
from providers.aws.network import account_of
from providers.base import OUTPUT_NAMES, StackConfigError
from providers.graph import Graph, Node
from skyferry.adapters import aws as aws_common
from skyferry.adapters.archives import s3 as s3_adapter
from skyferry.adapters.brokers import sns_sqs
from skyferry.adapters.stores import dynamodb
from skyferry.core.errors import ConfigurationError
from skyferry.core.messages import NewEvent
from skyferry.core.ports import NO_STREAM, Message, ViewChange
from skyferry.ledger import CONSUMER_GROUPS, MAX_DELIVERIES
from tests.services import dynamodb as dynamodb_service
from tests.services import moto_server

BASE = {
    "skyferry:target": "aws",
    "skyferry:name": "ledger",
    "skyferry:image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/skyferry:1.2.3",
    "skyferry:apiToken": "token-secret-value-0123456789",
    "skyferry:apiReplicas": "2",
    "skyferry:apiMaxReplicas": "5",
    "aws:region": "eu-west-1",
}
SECRETS = {"skyferry:apiToken"}
CERT = "arn:aws:acm:eu-west-1:123456789012:certificate/abcd-1234"
HTTPS = {"skyferry:aws": json.dumps({"certificateArn": CERT})}


def only(graph: Graph, type_: str) -> Node:
    nodes = graph.by_type(type_)
    assert len(nodes) == 1, f"expected one {type_}, got {[n.name for n in nodes]}"
    return nodes[0]


def policy_document(node: Node) -> dict[str, Any]:
    raw = node.get("policy")
    assert isinstance(raw, str), f"{node.name}: policy not rendered"
    document: dict[str, Any] = json.loads(raw)
    return document


@pytest.fixture
def aws_graph(run_config: Callable[..., Graph]) -> Graph:
    section = {"certificateArn": CERT}
    return run_config({**BASE, "skyferry:aws": json.dumps(section)}, SECRETS)


# --- the graph ------------------------------------------------------------------------------


def test_the_table_is_the_adapters_table_with_protection(aws_graph: Graph) -> None:
    table = only(aws_graph, "aws:dynamodb/table:Table")
    spec = dynamodb_service.spec_from_table_inputs(table.inputs)
    expected = dynamodb.table_spec("x")
    expected.pop("TableName")
    assert spec == expected
    assert table.get("billingMode") == "PAY_PER_REQUEST"
    assert table.get("pointInTimeRecovery.enabled") is True
    assert table.get("serverSideEncryption.enabled") is True
    key = only(aws_graph, "aws:kms/key:Key")
    assert table.get("serverSideEncryption.kmsKeyArn") == "arn:aws:mock:mock-region:000000000000:mock"
    assert key.urn in table.dependencies
    assert table.get("deletionProtectionEnabled") is True
    assert table.protect
    assert table.get("tags")["skyferry-role"] == "event-store"
    assert key.get("enableKeyRotation") is True


def test_broker_topic_queues_and_dead_letter_queues(aws_graph: Graph) -> None:
    topic = only(aws_graph, "aws:sns/topic:Topic")
    assert topic.get("name") == "ledger-events.fifo"
    assert topic.get("fifoTopic") is True
    assert topic.get("contentBasedDeduplication") is False
    assert topic.get("kmsMasterKeyId")
    queues = {q.get("name"): q for q in aws_graph.by_type("aws:sqs/queue:Queue")}
    for group in CONSUMER_GROUPS:
        name, dead = sns_sqs.queue_names("ledger-events.fifo", group)
        assert {name, dead} <= set(queues)
        assert queues[name].get("fifoQueue") is True
        assert queues[dead].get("fifoQueue") is True
        assert queues[name].get("kmsMasterKeyId")
        assert queues[dead].get("kmsMasterKeyId")
        redrive = json.loads(queues[name].get("redrivePolicy"))
        # one number: the deliveries the app subscribes with, and the redrive derived from them
        assert redrive["maxReceiveCount"] == sns_sqs.redrive_receive_count(MAX_DELIVERIES) == 50
        # bounded: SQS keeps what no consumer took for brokerRetentionDays (7)
        assert queues[name].get("messageRetentionSeconds") == 7 * 24 * 3600
        assert queues[dead].urn in queues[name].dependencies
    subscriptions = aws_graph.by_type("aws:sns/topicSubscription:TopicSubscription")
    assert len(subscriptions) == len(CONSUMER_GROUPS)
    assert all(s.get("protocol") == "sqs" and s.get("rawMessageDelivery") is True for s in subscriptions)
    for queue_policy in aws_graph.by_type("aws:sqs/queuePolicy:QueuePolicy"):
        [statement] = policy_document(queue_policy)["Statement"]
        assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
        assert statement["Action"] == "sqs:SendMessage"
        assert "aws:SourceArn" in statement["Condition"]["ArnEquals"]


@pytest.mark.parametrize("vpc", ["created", "given"])
def test_the_alb_reaches_only_the_tasks_api_port_by_their_group(run_config: Callable[..., Graph], vpc: str) -> None:
    section: dict[str, Any] = {"certificateArn": CERT}
    if vpc == "given":  # another CIDR than vpcCidr's default: the rules must not depend on it
        section |= {
            "vpcId": "vpc-0a1b2c3d4e5f60718",
            "publicSubnetIds": ["subnet-0a", "subnet-0b"],
            "privateSubnetIds": ["subnet-1a", "subnet-1b"],
        }
    graph = run_config({**BASE, "skyferry:aws": json.dumps(section)}, SECRETS)
    groups = {n.name: n for n in graph.by_type("aws:ec2/securityGroup:SecurityGroup")}
    assert set(groups) == {"ledger-alb", "ledger-tasks"}
    assert not groups["ledger-alb"].get("egress")
    assert not groups["ledger-alb"].get("ingress")
    rules = {n.name: n for n in graph.by_type("aws:ec2/securityGroupRule:SecurityGroupRule")}
    assert set(rules) == {"ledger-alb-in-443", "ledger-alb-in-80", "ledger-alb-out"}
    out = rules["ledger-alb-out"]
    assert (out.get("type"), out.get("fromPort"), out.get("toPort")) == ("egress", 8000, 8000)
    assert out.get("cidrBlocks") is None
    assert groups["ledger-tasks"].urn in out.dependencies, "the egress names the tasks' group"
    assert groups["ledger-alb"].urn in out.dependencies
    for port in (443, 80):
        assert rules[f"ledger-alb-in-{port}"].get("cidrBlocks") == ["0.0.0.0/0"]
        assert rules[f"ledger-alb-in-{port}"].get("type") == "ingress"
    assert groups["ledger-alb"].urn in groups["ledger-tasks"].dependencies, "tasks admit the ALB's group"
    assert policies.evaluate(graph) == []


def test_compute_runs_in_private_subnets_behind_an_https_alb(aws_graph: Graph) -> None:
    repository = only(aws_graph, "aws:ecr/repository:Repository")
    assert repository.get("imageTagMutability") == "IMMUTABLE"
    assert repository.get("imageScanningConfiguration.scanOnPush") is True
    services = {s.name: s for s in aws_graph.by_type("aws:ecs/service:Service")}
    assert set(services) == {"ledger-api", "ledger-worker"}
    private = {s.urn for s in aws_graph.nodes if s.type == "aws:ec2/subnet:Subnet" and "private" in s.name}
    for service in services.values():
        assert service.get("launchType") == "FARGATE"
        assert service.get("networkConfiguration.assignPublicIp") is False
        assert len(service.get("networkConfiguration.subnets")) == 2
        assert private <= set(service.dependencies)
    assert services["ledger-api"].get("desiredCount") == 2
    assert services["ledger-api"].get("loadBalancers.0.containerPort") == 8000
    listeners = {n.get("port"): n for n in aws_graph.by_type("aws:lb/listener:Listener")}
    assert listeners[443].get("protocol") == "HTTPS"
    assert listeners[443].get("certificateArn") == CERT
    assert listeners[80].get("defaultActions.0.type") == "redirect"
    scaling = only(aws_graph, "aws:appautoscaling/target:Target")
    assert (scaling.get("minCapacity"), scaling.get("maxCapacity")) == (2, 5)
    for definition in aws_graph.by_type("aws:ecs/taskDefinition:TaskDefinition"):
        [container] = json.loads(definition.get("containerDefinitions"))
        assert container["user"] == "10001"
        assert container["readonlyRootFilesystem"] is True
        assert container["mountPoints"] == [{"sourceVolume": "tmp", "containerPath": "/tmp"}]
        assert definition.get("volumes") == [{"name": "tmp"}]
        env = {e["name"]: e["value"] for e in container["environment"]}
        assert env["SKYFERRY_STORE_URL"] == "dynamodb://ledger-events?region=eu-west-1"
        assert env["SKYFERRY_BROKER_URL"].startswith("sns+sqs://ledger-events.fifo?region=eu-west-1&account=")
        assert "token-secret-value" not in definition.get("containerDefinitions")
        if container["name"] == "api":
            assert [s["name"] for s in container["secrets"]] == ["SKYFERRY_API_TOKEN"]
        else:  # the worker never serves: no token; ECS restarts it when its heartbeat stops
            assert container["secrets"] == []
            assert env["SKYFERRY_HEARTBEAT_FILE"].startswith("/tmp/")
            assert container["healthCheck"]["command"][:3] == ["CMD", "skyferry", "alive"]
        assert (definition.get("cpu"), definition.get("memory")) == ("512", "1024")
    api = services["ledger-api"]
    version = only(aws_graph, "aws:secretsmanager/secretVersion:SecretVersion")
    assert version.urn in api.dependencies, "the API starts only once its token has a value"
    assert aws_graph.outputs["api_url"].value.startswith("https://")


def test_tls_by_default_plain_http_only_by_explicit_opt_in(run_config: Callable[..., Graph]) -> None:
    with pytest.raises(StackConfigError) as caught:
        run_config(BASE, SECRETS)
    assert caught.value.key == "skyferry:aws.certificateArn"
    assert "plainHttp" in str(caught.value)
    graph = run_config({**BASE, "skyferry:aws": json.dumps({"plainHttp": True})}, SECRETS)
    [listener] = graph.by_type("aws:lb/listener:Listener")
    assert (listener.get("port"), listener.get("protocol")) == (80, "HTTP")
    assert listener.get("tags")["skyferry-plain-http"] == "opt-in"
    assert graph.outputs["api_url"].value.startswith("http://")
    assert policies.evaluate(graph) == [], "an explicit opt-in is not a finding"
    with pytest.raises(StackConfigError) as caught:
        run_config({**BASE, "skyferry:aws": json.dumps({"plainHttp": True, "certificateArn": CERT})}, SECRETS)
    assert caught.value.key == "skyferry:aws.plainHttp"


def test_secret_logs_and_archive_bucket(aws_graph: Graph) -> None:
    version = only(aws_graph, "aws:secretsmanager/secretVersion:SecretVersion")
    assert version.is_secret("secretString")
    assert only(aws_graph, "aws:secretsmanager/secret:Secret").get("kmsKeyId")
    for group in aws_graph.by_type("aws:cloudwatch/logGroup:LogGroup"):
        assert group.get("retentionInDays") == 30
        assert group.get("kmsKeyId")
    bucket = only(aws_graph, "aws:s3/bucket:Bucket")
    assert (
        only(aws_graph, "aws:s3/bucketVersioning:BucketVersioning").get("versioningConfiguration.status") == "Enabled"
    )
    block = only(aws_graph, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert bucket.urn in block.dependencies
    sse = only(aws_graph, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    assert sse.get("rules.0.applyServerSideEncryptionByDefault.sseAlgorithm") == "aws:kms"
    lifecycle = only(aws_graph, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    assert lifecycle.get("rules.0.expiration.days") == 365


def test_outputs_are_the_standard_ones_and_open_with_the_adapters(aws_graph: Graph) -> None:
    assert tuple(aws_graph.outputs) == OUTPUT_NAMES
    outputs = {k: v.value for k, v in aws_graph.outputs.items()}
    assert dynamodb.DynamoDBEventStore.from_url(outputs["store_url"]).url == outputs["store_url"]
    assert sns_sqs.SnsSqsBroker.from_url(outputs["broker_url"]).url.startswith("sns+sqs://ledger-events.fifo")
    archive = s3_adapter.S3Archive.from_url(outputs["archive_url"])
    assert archive.prefix == "exports"
    assert not any(v.secret for v in aws_graph.outputs.values())


def test_every_policy_passes_and_fires_on_a_weakened_stack(aws_graph: Graph, run_config: Callable[..., Graph]) -> None:
    assert policies.evaluate(aws_graph) == []
    weak = run_config({**BASE, **HTTPS, "skyferry:deletionProtection": "false"}, SECRETS)
    rules = {(f.rule, f.resource_type) for f in policies.evaluate(weak)}
    assert ("event-store-protection", "aws:dynamodb/table:Table") in rules


def test_bad_config_names_the_key(run_config: Callable[..., Graph]) -> None:
    with pytest.raises(ConfigurationError, match=r"skyferry:aws.consumerGroups: unknown key"):
        run_config({**BASE, "skyferry:aws": json.dumps({"consumerGroups": ["projections"]})}, SECRETS)
    # the app's retry policy sets the deliveries: no stack setting can disagree with it
    with pytest.raises(ConfigurationError, match=r"skyferry:aws.maxDeliveries: unknown key"):
        run_config({**BASE, "skyferry:aws": json.dumps({"maxDeliveries": 7, "certificateArn": CERT})}, SECRETS)
    with pytest.raises(ConfigurationError, match=r"aws:region"):
        run_config({k: v for k, v in {**BASE, **HTTPS}.items() if k != "aws:region"}, SECRETS)


def test_the_consumer_groups_are_the_groups_the_ledger_subscribes(aws_graph: Graph) -> None:
    from skyferry.ledger.process import TransferProcess
    from skyferry.ledger.projections import ledger_projections

    assert (TransferProcess.name, *(p.name for p in ledger_projections())) == CONSUMER_GROUPS
    assert CONSUMER_GROUPS == ("transfer-process", "balances", "history", "daily_totals", "transfers")
    names = {q.get("name") for q in aws_graph.by_type("aws:sqs/queue:Queue")}
    assert names == {n for g in CONSUMER_GROUPS for n in sns_sqs.queue_names("ledger-events.fifo", g)}


def test_fargate_sizes_are_valid_combinations() -> None:
    assert fargate_size(250, 512) == (256, 512)
    assert fargate_size(500, 1024) == (512, 1024)
    assert fargate_size(1000, 1024) == (1024, 2048)
    assert fargate_size(4000, 16384) == (4096, 16384)
    # memory above the CPU tier's range raises the CPU, never lowers the memory
    assert fargate_size(250, 1536) == (256, 2048)
    assert fargate_size(250, 3072) == (512, 3072)
    assert fargate_size(500, 8192) == (1024, 8192)
    assert fargate_size(500, 8704) == (2048, 9216)
    assert fargate_size(1000, 16384) == (2048, 16384)
    assert account_of("arn:aws:sns:eu-west-1:123456789012:t.fifo") == "123456789012"


# Fargate's (cpu, memory) pairs: 256 with 512, 1024 or 2048 MiB; the others whole GiB in a range
FARGATE_PAIRS = {
    256: {512, 1024, 2048},
    512: set(range(1024, 4097, 1024)),
    1024: set(range(2048, 8193, 1024)),
    2048: set(range(4096, 16385, 1024)),
    4096: set(range(8192, 30721, 1024)),
}


def test_every_size_the_config_allows_is_a_fargate_pair_at_least_as_big() -> None:
    for millicores in range(250, 4001, 250):
        for memory in range(512, 16385, 256):
            units, given = fargate_size(millicores, memory)
            assert given in FARGATE_PAIRS[units], (millicores, memory, units, given)
            assert units >= millicores * 1.024, (millicores, memory)
            assert given >= memory, (millicores, memory, units, given)


def test_a_task_asking_for_8_gib_gets_them_and_the_cpu_fargate_pairs_with_them(
    run_config: Callable[..., Graph],
) -> None:
    graph = run_config({**BASE, **HTTPS, "skyferry:cpuMillicores": "500", "skyferry:memoryMib": "8192"}, SECRETS)
    definitions = graph.by_type("aws:ecs/taskDefinition:TaskDefinition")
    assert len(definitions) == 2
    for definition in definitions:
        assert (definition.get("cpu"), definition.get("memory")) == ("1024", "8192")


# --- least privilege: the task role against the calls the adapters really make ----------------


def _declared() -> dict[str, tuple[str, ...]]:
    return {
        **dynamodb.IAM_ACTIONS_BY_OPERATION,
        **sns_sqs.IAM_ACTIONS_BY_OPERATION,
        **s3_adapter.IAM_ACTIONS_BY_OPERATION,
    }


#: Declared operations that only an error path calls (not provoked by the scenario).
ERROR_PATHS = {"AbortMultipartUpload"}


class Recorder:
    """Records the API operation names of every client it is attached to."""

    def __init__(self) -> None:
        self.operations: set[str] = set()
        self.lock = threading.Lock()

    def attach(self, client: Any) -> Any:
        client.meta.events.register("before-call.*.*", self._record)
        return client

    def _record(self, model: Any, **kwargs: Any) -> None:
        with self.lock:
            self.operations.add(model.name)


@pytest.fixture
def recorded_operations() -> set[str]:
    """Drive every adapter through its production paths on moto; yield the operations called."""
    import boto3

    endpoint = moto_server.endpoint()
    region = moto_server.REGION
    recorder = Recorder()

    def client(service: str) -> Any:
        make: Any = boto3.client
        return recorder.attach(make(service, region_name=region, endpoint_url=endpoint))

    with dynamodb_service.fresh_table() as table:
        events = dynamodb.DynamoDBEventStore(table, client=client("dynamodb"))
        views = dynamodb.DynamoDBViewStore(table, client=client("dynamodb"))
        sid = f"acct-{uuid.uuid4().hex[:8]}"
        events.append(sid, [NewEvent("Opened", {"n": 1})], NO_STREAM)
        events.append(sid, [NewEvent("Deposited", {"n": 2})], 1)
        events.read_stream(sid)
        events.read_all()
        events.last_position()
        list(events.list_streams("acct-"))
        views.commit("p", [ViewChange("c", "k", {"v": 1})], {"$all": "1"})
        views.get_many("c", ["k"])
        views.query("c")
        views.get_checkpoint("p")
        views.drop("c")

    topic = f"sf-{uuid.uuid4().hex[:8]}"
    options = f"region={region}&endpoint={endpoint}&wait=0&backoff=0"
    provisioner = sns_sqs.SnsSqsBroker.from_url(f"sns+sqs://{topic}?{options}&provision=true")
    provisioner.subscribe("g", lambda m: None, max_deliveries=2).close()
    _, _, parsed = aws_common.parse_options(f"sns+sqs://{topic}?{options}&account=123456789012")
    broker = sns_sqs.SnsSqsBroker(topic, sns=client("sns"), sqs=client("sqs"), options=parsed)
    attempts: list[int] = []

    def fail_twice(message: Message) -> None:
        attempts.append(message.delivery_attempt)
        raise RuntimeError("refused")

    subscription = broker.subscribe("g", fail_twice, max_deliveries=2)
    broker.publish([Message(id=str(uuid.uuid4()), key="k", body=b"{}")])
    deadline = time.monotonic() + 60
    while not broker.dead_letters("g") and time.monotonic() < deadline:
        time.sleep(0.05)
    subscription.close()
    assert attempts[:2] == [1, 2], "the scenario did not reach the dead-letter path"
    provisioner.close()
    broker.close()

    s3 = client("s3")
    bucket = f"skyferry-iam-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", region_name=region, endpoint_url=endpoint).create_bucket(Bucket=bucket)
    archive = s3_adapter.S3Archive(bucket, "exports", client=s3, multipart_bytes=5 * 1024 * 1024)
    archive.put("small", b"x")
    archive.put("big", b"y" * (6 * 1024 * 1024))
    archive.get("small")
    archive.exists("small")
    archive.list()
    for name in ("small", "big"):
        archive.delete(name)
    boto3.client("s3", region_name=region, endpoint_url=endpoint).delete_bucket(Bucket=bucket)
    return recorder.operations


def test_the_task_role_allows_exactly_the_calls_the_adapters_make(
    aws_graph: Graph, recorded_operations: set[str]
) -> None:
    declared = _declared()
    undeclared = recorded_operations - set(declared)
    assert not undeclared, f"adapters call operations with no IAM mapping: {sorted(undeclared)}"
    assert set(declared) - recorded_operations <= ERROR_PATHS, "a declared operation is never called"
    needed = {action for op in declared for action in declared[op]}

    [role_policy] = [n for n in aws_graph.by_type("aws:iam/rolePolicy:RolePolicy") if n.name == "ledger-task-data"]
    document = policy_document(role_policy)
    granted = {a for st in document["Statement"] for a in st["Action"]} - {"kms:Decrypt", "kms:GenerateDataKey"}
    assert granted == needed, f"missing: {sorted(needed - granted)}; beyond need: {sorted(granted - needed)}"
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "*" not in statement["Resource"]


def test_each_action_is_granted_on_only_the_arns_it_touches() -> None:
    table = "arn:aws:dynamodb:eu-west-1:1:table/t"
    topic = "arn:aws:sns:eu-west-1:1:t.fifo"
    queues = ["arn:aws:sqs:eu-west-1:1:t-g.fifo", "arn:aws:sqs:eu-west-1:1:t-g-dlq.fifo"]
    bucket = "arn:aws:s3:::b"
    key = "arn:aws:kms:eu-west-1:1:key/k"
    document = task_role_policy(table, topic, queues, bucket, key)
    by_action: dict[str, set[str]] = {}
    for statement in document["Statement"]:
        for action in statement["Action"]:
            by_action.setdefault(action, set()).update(statement["Resource"])
    for action in dynamodb.IAM_ACTIONS:
        assert by_action[action] == {table, f"{table}/index/{dynamodb.POSITION_INDEX}"}
    assert by_action["sns:Publish"] == {topic}
    for action in sns_sqs.IAM_ACTIONS_CONSUME:
        assert by_action[action] == set(queues)
    for action in s3_adapter.IAM_OBJECT_ACTIONS:
        assert by_action[action] == {f"{bucket}/exports/*"}
    assert by_action["s3:ListBucket"] == {bucket}
    assert by_action["kms:Decrypt"] == by_action["kms:GenerateDataKey"] == {key}


def _allows(document: dict[str, Any], action: str, resource: str, context: dict[str, str]) -> bool:
    """IAM's evaluation of an Allow-only identity policy for one request (String* conditions).

    A condition on a key the request does not carry is false, unless its operator ends in
    ``IfExists``; ``StringLike`` matches ``*`` and ``?`` wildcards.
    """
    import fnmatch

    for statement in document["Statement"]:
        if action not in statement["Action"] or not any(
            fnmatch.fnmatchcase(resource, pattern) for pattern in statement["Resource"]
        ):
            continue
        met = True
        for operator, clauses in statement.get("Condition", {}).items():
            base = operator.removesuffix("IfExists")
            assert base in ("StringLike", "StringEquals"), f"no evaluator for {operator}"
            for key, wanted in clauses.items():
                wanted = wanted if isinstance(wanted, list) else [wanted]
                if key not in context:
                    met = met and operator.endswith("IfExists")
                elif base == "StringLike":
                    met = met and any(fnmatch.fnmatchcase(context[key], w) for w in wanted)
                else:
                    met = met and context[key] in wanted
        if met:
            return True
    return False


def test_a_missing_manifest_reads_as_404_and_listing_stays_in_the_prefix() -> None:
    bucket = "arn:aws:s3:::b"
    document = task_role_policy("t", "p", ["q"], bucket, "k")
    # S3 answers HeadObject of a missing key with 404 only when s3:ListBucket is allowed on the
    # bucket for a request with no s3:prefix; otherwise 403, and `skyferry export` cannot start
    assert _allows(document, "s3:ListBucket", bucket, {})
    assert _allows(document, "s3:ListBucket", bucket, {"s3:prefix": "exports/run-1/"})
    assert _allows(document, "s3:ListBucket", bucket, {"s3:prefix": "exports"})
    assert not _allows(document, "s3:ListBucket", bucket, {"s3:prefix": "other/"})
    assert _allows(document, "s3:GetObject", f"{bucket}/exports/run-1/manifest.json", {})
    assert not _allows(document, "s3:GetObject", f"{bucket}/other/x", {})


def test_a_denied_head_object_is_a_configuration_error_naming_the_grant() -> None:
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("s3", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y")
    archive = s3_adapter.S3Archive("b", "exports", client=client)
    with Stubber(client) as stub:
        stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
        with pytest.raises(ConfigurationError, match=r"s3://b/exports/run/manifest.json: access denied") as caught:
            archive.exists("run/manifest.json")
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
        assert archive.exists("run/manifest.json") is False
    assert "s3:ListBucket" in str(caught.value)
