"""The mock graph answers invokes (get caller identity, zones …), so components may use them."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from providers.graph import run_program


def test_an_invoke_under_mocks_returns_the_fake_identity() -> None:
    def program() -> None:
        pulumi.export("account", aws.get_caller_identity().account_id)

    graph = run_program(program, {"aws:region": "eu-west-1"})
    assert graph.outputs["account"].value == "123456789012"
    assert graph.outputs["account"].secret is False
