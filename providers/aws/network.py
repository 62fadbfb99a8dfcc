"""The aws target's network: the region, and the VPC the tasks run in (created, or the one given).

A created VPC has two public subnets (the ALB) and two private ones (the tasks) in two zones,
a NAT gateway, and gateway endpoints so that DynamoDB and S3 traffic stays on AWS's network.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from providers.aws.config import AwsConfig
from providers.base import Platform, StackConfigError


def account_of(arn: str) -> str:
    """The account id field of an ARN (empty when the ARN has none, as under mocks)."""
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 else ""


@dataclass(frozen=True)
class Network:
    """Where the app runs: the region and the VPC's subnets."""

    region: str
    vpc_id: pulumi.Input[str]
    public_subnets: list[pulumi.Input[str]]
    private_subnets: list[pulumi.Input[str]]


def declare_network(platform: Platform[AwsConfig]) -> Network:
    """The region (``aws:region``, required) and the VPC: the given one, or a new one."""
    region = pulumi.Config("aws").get("region")
    if not region:
        raise StackConfigError("aws:region", "required: the region to deploy to (pulumi config set aws:region ...)")
    section = platform.section
    if section.vpc_id is not None:
        return Network(region, section.vpc_id, list(section.public_subnet_ids), list(section.private_subnet_ids))
    name = platform.common.name
    zones = [f"{region}a", f"{region}b"]
    octets = section.vpc_cidr.split(".")[:2]
    vpc = aws.ec2.Vpc(
        f"{name}-vpc",
        cidr_block=section.vpc_cidr,
        enable_dns_hostnames=True,
        enable_dns_support=True,
        tags=platform.tags(Name=f"{name}-vpc"),
        opts=platform.child_opts(),
    )
    gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=platform.tags(), opts=platform.child_opts())
    public_routes = aws.ec2.RouteTable(
        f"{name}-public",
        vpc_id=vpc.id,
        routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}],
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    public: list[aws.ec2.Subnet] = []
    private: list[aws.ec2.Subnet] = []
    for i in range(2):
        zone = zones[i]
        subnet = aws.ec2.Subnet(
            f"{name}-public-{i}",
            vpc_id=vpc.id,
            cidr_block=f"{octets[0]}.{octets[1]}.{i}.0/24",
            availability_zone=zone,
            map_public_ip_on_launch=False,
            tags=platform.tags(Name=f"{name}-public-{i}"),
            opts=platform.child_opts(),
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-public-{i}", subnet_id=subnet.id, route_table_id=public_routes.id, opts=platform.child_opts()
        )
        public.append(subnet)
    address = aws.ec2.Eip(f"{name}-nat", domain="vpc", tags=platform.tags(), opts=platform.child_opts())
    nat = aws.ec2.NatGateway(
        f"{name}-nat",
        subnet_id=public[0].id,
        allocation_id=address.id,
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    private_routes = aws.ec2.RouteTable(
        f"{name}-private",
        vpc_id=vpc.id,
        routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
        tags=platform.tags(),
        opts=platform.child_opts(),
    )
    for i in range(2):
        zone = zones[i]
        subnet = aws.ec2.Subnet(
            f"{name}-private-{i}",
            vpc_id=vpc.id,
            cidr_block=f"{octets[0]}.{octets[1]}.{10 + i}.0/24",
            availability_zone=zone,
            tags=platform.tags(Name=f"{name}-private-{i}"),
            opts=platform.child_opts(),
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-private-{i}", subnet_id=subnet.id, route_table_id=private_routes.id, opts=platform.child_opts()
        )
        private.append(subnet)
    # DynamoDB and S3 traffic stays on the AWS network (and off the NAT bill)
    for service in ("dynamodb", "s3"):
        aws.ec2.VpcEndpoint(
            f"{name}-{service}",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{region}.{service}",
            vpc_endpoint_type="Gateway",
            route_table_ids=[private_routes.id],
            tags=platform.tags(),
            opts=platform.child_opts(),
        )
    return Network(region, vpc.id, [s.id for s in public], [s.id for s in private])
