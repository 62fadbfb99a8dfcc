"""The aws target's compute: ECS Fargate services api and worker behind an ALB, their image repository and logs.

The api listens on :data:`API_PORT` behind the ALB (HTTPS on 443 with the certificate, or
the explicit plain-HTTP opt-in) and scales on CPU; the worker has a container health check
on its heartbeat (``skyferry alive``).  Both run as a non-root user on a read-only root
filesystem, with the environment of :mod:`providers.environment`; only the api reads the
token, from Secrets Manager.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from providers.aws.config import AwsConfig
from providers.aws.identity import Access, Identity
from providers.aws.network import Network
from providers.base import Platform, StackConfigError
from providers.environment import AppUrls, api_environment, worker_environment
from providers.policies import PLAIN_HTTP_OPT_IN, PLAIN_HTTP_TAG

API_PORT = 8000
RUN_AS_USER = "10001"
#: Fargate's CPU units (1024 a vCPU) and the memory range of each, MiB: 256 takes 512, 1024 or
#: 2048, the others any whole GiB in their range.
_FARGATE_CPU = (256, 512, 1024, 2048, 4096)
_FARGATE_MEMORY = {256: (512, 2048), 512: (1024, 4096), 1024: (2048, 8192), 2048: (4096, 16384), 4096: (8192, 30720)}


def _fargate_memory(units: int, memory_mib: int) -> int | None:
    """The least memory of ``units``' range that holds ``memory_mib`` (None: more than the range allows)."""
    low, high = _FARGATE_MEMORY[units]
    step = 512 if units == 256 and memory_mib <= 512 else 1024
    memory = max(low, math.ceil(memory_mib / step) * step)
    return memory if memory <= high else None


def fargate_size(cpu_millicores: int, memory_mib: int) -> tuple[int, int]:
    """The smallest valid Fargate (cpu units, memory MiB) at least as big as asked.

    The CPU is raised to the smallest tier whose memory range holds ``memory_mib``
    (``fargate_size(500, 8192)`` is ``(1024, 8192)``); what no tier holds is a
    :class:`StackConfigError` naming the key.
    """
    needed = math.ceil(cpu_millicores * 1.024)
    if needed > _FARGATE_CPU[-1]:
        raise StackConfigError("skyferry:cpuMillicores", f"{cpu_millicores} is more than Fargate's 4 vCPUs")
    for units in _FARGATE_CPU:
        memory = _fargate_memory(units, memory_mib) if units >= needed else None
        if memory is not None:
            return units, memory
    raise StackConfigError(
        "skyferry:memoryMib", f"{memory_mib} MiB is more than Fargate allows ({_FARGATE_MEMORY[4096][1]} MiB at most)"
    )


@dataclass(frozen=True)
class Compute:
    """What the workloads expose: the API's base URL (the ALB's)."""

    api_url: pulumi.Output[str]


def declare_compute(
    platform: Platform[AwsConfig],
    network: Network,
    identity: Identity,
    access: Access,
    urls: AppUrls[pulumi.Output[str]],
) -> Compute:
    """The image repository, log groups, ALB and ECS Fargate services api and worker (api autoscaled on CPU)."""
    name = platform.common.name
    key = identity.key
    aws.ecr.Repository(
        f"{name}-images",
        name=f"{name}",
        image_tag_mutability="IMMUTABLE",
        image_scanning_configuration={"scan_on_push": True},
        encryption_configurations=[{"encryption_type": "KMS", "kms_key": key.arn}],
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    logs = {
        role: aws.cloudwatch.LogGroup(
            f"{name}-{role}",
            name=f"/skyferry/{name}/{role}",
            retention_in_days=platform.section.log_retention_days,
            kms_key_id=key.arn,
            tags=platform.tags(),
            opts=platform.child_opts(),
        )
        for role in ("api", "worker")
    }
    vpc_id, public_subnets, private_subnets = network.vpc_id, network.public_subnets, network.private_subnets
    secret = identity.secret
    section = platform.section
    https = section.certificate_arn is not None
    # The ALB's rules are resources of their own: its egress names the tasks' group, whose
    # ingress names the ALB's (inline, the two groups would refer to each other), so the
    # ALB reaches the API port of the tasks and nothing else, in a created VPC or a given one.
    alb_sg = aws.ec2.SecurityGroup(
        f"{name}-alb",
        vpc_id=vpc_id,
        description="skyferry ALB: HTTP(S) from the allowed CIDRs",
        tags=platform.tags(),
        opts=platform.child_opts(),
    )

    def alb_rule(suffix: str, direction: str, port: int, description: str, **peer: Any) -> None:
        aws.ec2.SecurityGroupRule(
            f"{name}-alb-{suffix}",
            type=direction,
            security_group_id=alb_sg.id,
            protocol="tcp",
            from_port=port,
            to_port=port,
            description=description,
            opts=platform.child_opts(),
            **peer,
        )

    for port in [443, 80] if https else [80]:
        allowed = {"cidr_blocks": section.allowed_cidrs}
        alb_rule(f"in-{port}", "ingress", port, f"port {port} from the allowed CIDRs", **allowed)
    tasks_sg = aws.ec2.SecurityGroup(
        f"{name}-tasks",
        vpc_id=vpc_id,
        description="skyferry tasks: the API port from the ALB only; HTTPS out to AWS APIs",
        ingress=[{"protocol": "tcp", "from_port": API_PORT, "to_port": API_PORT, "security_groups": [alb_sg.id]}],
        egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"]}],
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    alb_rule("out", "egress", API_PORT, "the API port of the tasks", source_security_group_id=tasks_sg.id)
    alb = aws.lb.LoadBalancer(
        f"{name}-api",
        load_balancer_type="application",
        internal=False,
        security_groups=[alb_sg.id],
        subnets=public_subnets,
        drop_invalid_header_fields=True,
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    target_group = aws.lb.TargetGroup(
        f"{name}-api",
        port=API_PORT,
        protocol="HTTP",
        target_type="ip",
        vpc_id=vpc_id,
        health_check={"path": "/readyz", "matcher": "200", "interval": 15, "healthy_threshold": 2},
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    if https:
        listener = aws.lb.Listener(
            f"{name}-https",
            load_balancer_arn=alb.arn,
            port=443,
            protocol="HTTPS",
            ssl_policy="ELBSecurityPolicy-TLS13-1-2-2021-06",
            certificate_arn=section.certificate_arn,
            default_actions=[{"type": "forward", "target_group_arn": target_group.arn}],
            opts=platform.child_opts(),
        )
        aws.lb.Listener(
            f"{name}-http-redirect",
            load_balancer_arn=alb.arn,
            port=80,
            protocol="HTTP",
            default_actions=[
                {"type": "redirect", "redirect": {"port": "443", "protocol": "HTTPS", "status_code": "HTTP_301"}}
            ],
            opts=platform.child_opts(),
        )
    else:  # the explicit opt-in skyferry:aws.plainHttp (validate refuses it otherwise)
        listener = aws.lb.Listener(
            f"{name}-http",
            load_balancer_arn=alb.arn,
            port=80,
            protocol="HTTP",
            default_actions=[{"type": "forward", "target_group_arn": target_group.arn}],
            tags=platform.tags(**{PLAIN_HTTP_TAG: PLAIN_HTTP_OPT_IN}),
            opts=platform.child_opts(),
        )
    cluster = aws.ecs.Cluster(
        f"{name}",
        settings=[{"name": "containerInsights", "value": "enabled"}],
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    cpu, memory = fargate_size(platform.common.cpu_millicores, platform.common.memory_mib)
    services: dict[str, aws.ecs.Service] = {}
    for role, replicas in (("api", platform.common.api_replicas), ("worker", platform.common.worker_replicas)):
        log_group = logs[role]
        definition = pulumi.Output.all(secret.arn, log_group.name, urls.store, urls.broker, urls.archive).apply(
            functools.partial(_containers, platform, network.region, role)
        )
        task_definition = aws.ecs.TaskDefinition(
            f"{name}-{role}",
            family=f"{name}-{role}",
            requires_compatibilities=["FARGATE"],
            network_mode="awsvpc",
            cpu=str(cpu),
            memory=str(memory),
            # the root filesystem is read-only: /tmp (HOME, the worker's heartbeat) is a task volume
            volumes=[{"name": "tmp"}],
            execution_role_arn=access.execution_role.arn,
            task_role_arn=access.task_role.arn,
            runtime_platform={"operating_system_family": "LINUX", "cpu_architecture": "X86_64"},
            container_definitions=definition,
            tags=platform.tags(),
            opts=platform.child_opts(),
        )
        services[role] = aws.ecs.Service(
            f"{name}-{role}",
            cluster=cluster.arn,
            task_definition=task_definition.arn,
            desired_count=replicas,
            launch_type="FARGATE",
            network_configuration={
                "subnets": private_subnets,
                "security_groups": [tasks_sg.id],
                "assign_public_ip": False,
            },
            load_balancers=(
                [{"target_group_arn": target_group.arn, "container_name": "api", "container_port": API_PORT}]
                if role == "api"
                else []
            ),
            deployment_circuit_breaker={"enable": True, "rollback": True},
            propagate_tags="SERVICE",
            tags=platform.tags(),
            opts=platform.child_opts(depends_on=[listener, identity.token_version] if role == "api" else []),
        )
    scaling = aws.appautoscaling.Target(
        f"{name}-api",
        service_namespace="ecs",
        scalable_dimension="ecs:service:DesiredCount",
        resource_id=pulumi.Output.concat("service/", cluster.name, "/", services["api"].name),
        min_capacity=platform.common.api_replicas,
        max_capacity=max(platform.common.api_replicas, platform.common.api_max_replicas),
        opts=platform.child_opts(),
    )
    aws.appautoscaling.Policy(
        f"{name}-api-cpu",
        policy_type="TargetTrackingScaling",
        service_namespace=scaling.service_namespace,
        scalable_dimension=scaling.scalable_dimension,
        resource_id=scaling.resource_id,
        target_tracking_scaling_policy_configuration={
            "target_value": 60,
            "predefined_metric_specification": {"predefined_metric_type": "ECSServiceAverageCPUUtilization"},
        },
        opts=platform.child_opts(),
    )
    scheme = "https" if https else "http"
    api_url: pulumi.Output[str] = alb.dns_name.apply(lambda host: f"{scheme}://{host or name + '-api.elb.invalid'}")
    return Compute(api_url=api_url)


def _containers(platform: Platform[AwsConfig], region: str, role: str, values: list[str]) -> str:
    """The task's container definitions (JSON): ``values`` = secret ARN, log group, store, broker, archive URL."""
    api = role == "api"
    urls = AppUrls(store=values[2], broker=values[3], archive=values[4])
    env = api_environment(urls, port=API_PORT) if api else worker_environment(urls)
    environment = [{"name": k, "value": v} for k, v in {**env.urls, **env.process}.items()]
    container: dict[str, Any] = {
        "name": role,
        "image": platform.common.image,
        "command": ["serve"] if api else ["worker"],
        "essential": True,
        "user": RUN_AS_USER,
        "readonlyRootFilesystem": True,
        "mountPoints": [{"sourceVolume": "tmp", "containerPath": "/tmp"}],  # noqa: S108
        "portMappings": [{"containerPort": API_PORT, "protocol": "tcp"}] if api else [],
        "environment": environment,
        # only the API serves requests: the worker never sees the token
        "secrets": [{"name": env.secret, "valueFrom": values[0]}] if env.secret else [],
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {"awslogs-group": values[1], "awslogs-region": region, "awslogs-stream-prefix": role},
        },
        "linuxParameters": {"capabilities": {"drop": ["ALL"]}, "initProcessEnabled": True},
    }
    if not api:
        # a hung worker stops touching its heartbeat: ECS replaces the task
        container["healthCheck"] = {
            "command": ["CMD", "skyferry", "alive", "--max-age", "120"],
            "interval": 30,
            "timeout": 10,
            "retries": 3,
            "startPeriod": 60,
        }
    return json.dumps([container])
