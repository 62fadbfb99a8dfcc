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


def test_table_lists_every_resource_outputs_and_findings() -> None:
    code, out, _ = run("kubernetes", "table")
    assert code == 0
    for type_ in (
        "skyferry:kubernetes:Platform",
        "kubernetes:core/v1:Namespace",
        "kubernetes:core/v1:Secret",
        "kubernetes:helm.sh/v3:Release",
    ):
        assert type_ in out
    assert "Stack kubernetes: 5 resources to create" in out
    for name in OUTPUT_NAMES:
        assert f"  {name} = " in out
    assert "POLICY FINDINGS: 0" in out
    assert "stringData=[secret]" in out


def test_json_is_complete_and_masks_secrets() -> None:
    code, out, _ = run("kubernetes", "json")
    assert code == 0
    document = json.loads(out)
    assert document["stack"] == "kubernetes"
    types = [r["type"] for r in document["resources"]]
    assert types.count("kubernetes:helm.sh/v3:Release") == 1
    release = next(r for r in document["resources"] if r["type"] == "kubernetes:helm.sh/v3:Release")
    assert release["parent"] == "skyferry"
    assert set(release["dependencies"]) == {"skyferry-ns", "skyferry-credentials"}
    assert release["inputs"]["values"]["existingSecret"] == "skyferry-credentials"
    secret = next(r for r in document["resources"] if r["type"] == "kubernetes:core/v1:Secret")
    assert secret["inputs"]["stringData"] == "[secret]"
    assert "postgresql://skyferry:" not in out  # no credential-bearing URL anywhere
    assert list(document["outputs"]) == list(OUTPUT_NAMES)
    assert document["findings"] == []


def test_mermaid_draws_parents_and_dependencies() -> None:
    code, out, _ = run("kubernetes", "mermaid")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "flowchart TD"
    nodes = [line for line in lines if '["' in line]
    parent_edges = [line for line in lines if " --> " in line]
    dependency_edges = [line for line in lines if " -.-> " in line]
    assert len(nodes) == 5
    assert len(parent_edges) == 4  # every resource under the component
    assert len(dependency_edges) == 3  # Secret -> namespace, Release -> namespace and Secret
    assert '  r0["skyferry<br/><small>skyferry:kubernetes:Platform</small>"]' in lines


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
