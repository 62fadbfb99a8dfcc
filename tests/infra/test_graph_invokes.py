"""The mock graph answers invokes (get caller identity, zones …), so components may use them."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from providers.graph import run_program


def test_an_invoke_under_mocks_returns_the_fake_identity() -> None:
    def program() -> None:
        pulumi.export("account", aws.get_caller_identity().account_id)

    graph = run_program(program, {"aws:region": "eu-west-1"})
    assert graph.outputs["account"].value == "000000000000"
    assert graph.outputs["account"].secret is False


def test_a_run_after_asyncio_run_still_has_an_event_loop() -> None:
    """asyncio.run() leaves the main thread without a loop; the mock runs must not depend on one."""
    import asyncio

    asyncio.run(asyncio.sleep(0))

    def program() -> None:
        pulumi.export("region", "eu-west-1")

    assert run_program(program, {}).outputs["region"].value == "eu-west-1"
    assert run_program(program, {}).outputs["region"].value == "eu-west-1"
