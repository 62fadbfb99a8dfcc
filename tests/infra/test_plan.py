"""``skyferry plan``: the offline plan of a stack as a table, JSON and Mermaid, with policy findings."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from providers import plan as plan_mod
from providers import policies
from providers.base import OUTPUT_NAMES
from providers.policies import Finding


def run(stack: str, fmt: str, stacks_dir: Path | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    kwargs = {"stacks_dir": stacks_dir} if stacks_dir else {}
    code = plan_mod.command(stack, fmt, out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def test_table_lists_every_resource_by_role_with_outputs_and_findings() -> None:
    code, out, _ = run("kubernetes", "table")
    assert code == 0
    for type_ in ("kubernetes:core:Namespace", "kubernetes:core:Secret", "kubernetes:helm.sh:Release"):
        assert type_ in out
    assert out.startswith("Stack kubernetes: 5 resources to create, under skyferry:kubernetes:Platform 'skyferry'")
    for role in ("IDENTITY (1)", "COMPUTE (1)", "NETWORK (1)"):
        assert role in out
    for name in OUTPUT_NAMES:
        assert f"  {name} = " in out
    assert "POLICY FINDINGS: 0" in out
    assert "stringData=[secret]" in out


@pytest.mark.parametrize("stack", ["kubernetes", "aws", "azure", "gcp"])
def test_every_format_is_byte_identical_across_runs_and_the_table_fits_120_columns(stack: str) -> None:
    runs = [plan_mod.make_plan(stack) for _ in range(2)]  # two runs of the program, each rendered three ways
    first, second = ({fmt: render(plan) for fmt, render in plan_mod.RENDERERS.items()} for plan in runs)
    assert first == second
    assert runs[0].findings == []
    too_wide = [line for line in first["table"].splitlines() if len(line) > plan_mod.WIDTH]
    assert too_wide == []


@pytest.mark.parametrize("stack", ["aws", "azure", "gcp"])
def test_values_the_cloud_assigns_are_shown_as_unknown_not_as_mock_values(stack: str) -> None:
    plan = plan_mod.make_plan(stack)
    table, document = plan_mod.as_table(plan), plan_mod.as_json(plan)
    for made_up in ("arn:aws:mock", "mock.invalid", "000000000000", "-id;", ".invalid"):
        assert made_up not in table, made_up
        assert made_up not in document, made_up
    assert plan_mod.UNKNOWN in table
    ids = [f"{n.name}-id" for n in plan.graph.nodes if n.custom]
    referenced = [i for i in ids if f'"{i}"' in json.dumps([n.inputs for n in plan.graph.nodes])]
    assert referenced, "the graph references made-up ids (the test would prove nothing)"
    for made_up_id in referenced:
        assert f'"{made_up_id}"' not in document


def test_aws_outputs_show_what_is_known_and_what_is_not() -> None:
    document = json.loads(run("aws", "json")[1])
    outputs = {k: v["value"] for k, v in document["outputs"].items()}
    assert outputs["api_url"] == f"https://{plan_mod.UNKNOWN}"
    assert outputs["broker_url"].endswith(f"&account={plan_mod.UNKNOWN}")
    assert outputs["store_url"] == "dynamodb://skyferry-events?region=eu-west-1"
    assert outputs["image"] == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/skyferry:0.1.0"


def test_json_is_complete_and_masks_secrets() -> None:
    code, out, _ = run("kubernetes", "json")
    assert code == 0
    document = json.loads(out)
    assert document["stack"] == "kubernetes"
    types = [r["type"] for r in document["resources"]]
    assert types.count("kubernetes:helm.sh/v3:Release") == 1
    release = next(r for r in document["resources"] if r["type"] == "kubernetes:helm.sh/v3:Release")
    assert release["parent"] == "skyferry"
    assert release["role"] == "compute"
    assert release["dependencies"] == ["skyferry-credentials", "skyferry-ns"]
    assert release["inputs"]["values"]["existingSecret"] == "skyferry-credentials"
    secret = next(r for r in document["resources"] if r["type"] == "kubernetes:core/v1:Secret")
    assert secret["inputs"]["stringData"] == "[secret]"
    assert "postgresql://skyferry:" not in out  # no credential-bearing URL anywhere
    assert list(document["outputs"]) == list(OUTPUT_NAMES)
    assert document["findings"] == []


@pytest.mark.parametrize("stack", ["kubernetes", "aws", "azure", "gcp"])
def test_mermaid_groups_resources_by_role_with_one_edge_per_pair_of_roles(stack: str) -> None:
    plan = plan_mod.make_plan(stack)
    lines = plan_mod.as_mermaid(plan).strip().splitlines()
    assert lines[0] == "flowchart LR"
    subgraphs = [line.split()[1].split("[")[0] for line in lines if line.strip().startswith("subgraph ")]
    assert set(subgraphs) <= set(plan_mod.ROLES)
    assert len(subgraphs) >= 3
    nodes = [line for line in lines if '["' in line and "subgraph" not in line]
    assert len(nodes) == sum(1 for n in plan.graph.nodes if n.custom)
    edges = [line for line in lines if "-->" in line]
    pairs = [tuple(line.split(" -->")[0].split() + line.split("| ")[-1].split()) for line in edges]
    assert len(pairs) == len(set(pairs)) <= len(plan_mod.ROLES) ** 2  # not one edge per resource
    assert all(a in plan_mod.ROLES and b in plan_mod.ROLES and a != b for a, b in pairs)


def test_role_of_sorts_the_kinds_of_resources() -> None:
    from providers.graph import Node

    def role(type_: str) -> str:
        return plan_mod.role_of(
            Node(urn="u", type=type_, name="n", custom=True, parent=None, dependencies=[], inputs={})
        )

    assert role("aws:dynamodb/table:Table") == "store"
    assert role("azure-native:cosmosdb:SqlResourceSqlContainer") == "store"
    assert role("gcp:firestore/database:Database") == "store"
    assert role("aws:sqs/queue:Queue") == "broker"
    assert role("gcp:pubsub/subscription:Subscription") == "broker"
    assert role("azure-native:servicebus:Topic") == "broker"
    assert role("aws:ecs/service:Service") == "compute"
    assert role("gcp:cloudrunv2/workerPool:WorkerPool") == "compute"
    assert role("azure-native:app:ContainerApp") == "compute"
    assert role("aws:ec2/subnet:Subnet") == "network"
    assert role("aws:lb/listener:Listener") == "network"
    assert role("aws:iam/rolePolicy:RolePolicy") == "identity"
    assert role("aws:sqs/queuePolicy:QueuePolicy") == "identity"
    assert role("gcp:pubsub/topicIAMMember:TopicIAMMember") == "identity"
    assert role("azure-native:keyvault:Secret") == "identity"


def test_findings_make_exit_code_1_and_are_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    finding = Finding("no-wildcard-iam", "aws:iam/policy:Policy", "app", "urn:x", "wildcard action in ['*']")
    monkeypatch.setattr(policies, "evaluate", lambda graph: [finding])
    code, out, _ = run("kubernetes", "table")
    assert code == 1
    assert "POLICY FINDINGS: 1" in out
    assert "[no-wildcard-iam] aws:iam/policy:Policy 'app': wildcard action in ['*']" in out


def test_bad_input_exits_2_naming_the_problem(tmp_path: Path) -> None:
    code, _, err = run("nope", "table")
    assert code == 2
    assert "no stack 'nope'" in err
    code, _, err = run("kubernetes", "yaml")
    assert code == 2
    assert "--format" in err
    (tmp_path / "Pulumi.bad.yaml").write_text(
        "config:\n  skyferry:target: kubernetes\n  skyferry:image: a/b:1\n  skyferry:apiReplicas: '0'\n"
        "  skyferry:apiToken:\n    secure: v1:x\n"
    )
    code, out, err = run("bad", "json", tmp_path)
    assert code == 2
    assert "skyferry:apiReplicas" in err
    assert out == ""
    (tmp_path / "Pulumi.plain.yaml").write_text(
        "config:\n  skyferry:target: kubernetes\n  skyferry:image: a/b:1\n  skyferry:databasePassword: hunter2\n"
        "  skyferry:apiToken:\n    secure: v1:x\n"
    )
    code, _, err = run("plain", "table", tmp_path)
    assert code == 2
    assert "skyferry:databasePassword: must be a secret" in err
    (tmp_path / "Pulumi.missing.yaml").write_text("config:\n  skyferry:target: kubernetes\n  skyferry:image: a/b:1\n")
    code, _, err = run("missing", "table", tmp_path)
    assert code == 2
    assert "Stack 'missing' is missing configuration value 'skyferry:apiToken'" in err


def test_the_cli_mounts_plan() -> None:
    from skyferry.cli import cli

    result = CliRunner().invoke(cli, ["plan", "--stack", "kubernetes", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stack"] == "kubernetes"
