"""Settings of the aws target: the structured key ``skyferry:aws``.

| key | default | meaning |
|---|---|---|
| ``consumerGroups`` | :data:`LEDGER_GROUPS` | broker consumer groups: one SQS FIFO queue + DLQ each |
| ``maxDeliveries`` | 5 | deliveries before a message goes to its group's DLQ (redrive ``maxReceiveCount``) |
| ``certificateArn`` | — | ACM certificate of the ALB: HTTPS on 443 (and 80 redirects); none: HTTP on 80 |
| ``vpcId`` | — | use this VPC (then ``publicSubnetIds`` and ``privateSubnetIds``); none: create one |
| ``publicSubnetIds`` | — | subnets of the ALB (at least 2 zones) |
| ``privateSubnetIds`` | — | subnets of the tasks (at least 2 zones, with a NAT or VPC endpoints) |
| ``vpcCidr`` | ``10.40.0.0/16`` | CIDR of the VPC created when ``vpcId`` is not given |
| ``logRetentionDays`` | 30 | CloudWatch log retention, days |
| ``allowedCidrs`` | ``["0.0.0.0/0"]`` | who may reach the ALB |
"""

from __future__ import annotations

from pydantic import Field, model_validator

from providers.base import TargetConfig

#: The groups the ledger's worker subscribes (``Ledger.start_consumers``): the process manager and
#: every projection; ``tests/infra/test_aws.py`` checks this list against the app.
LEDGER_GROUPS = ("transfer-process", "balances", "history", "daily_totals", "transfers")

_LOG_RETENTION = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)


class AwsConfig(TargetConfig):
    """The aws target's settings (``skyferry:aws``)."""

    consumer_groups: list[str] = Field(
        default_factory=lambda: list(LEDGER_GROUPS),
        min_length=1,
        max_length=20,
        description="broker consumer groups (one SQS FIFO queue and DLQ each)",
    )
    max_deliveries: int = Field(default=5, ge=1, le=1000, description="deliveries before dead-lettering")
    certificate_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[A-Za-z0-9-]+$",
        description="ACM certificate ARN of the ALB's HTTPS listener",
    )
    vpc_id: str | None = Field(default=None, pattern=r"^vpc-[0-9a-f]{8,17}$", description="existing VPC")
    public_subnet_ids: list[str] = Field(default_factory=list, description="ALB subnets (existing VPC)")
    private_subnet_ids: list[str] = Field(default_factory=list, description="task subnets (existing VPC)")
    vpc_cidr: str = Field(
        default="10.40.0.0/16", pattern=r"^\d{1,3}\.\d{1,3}\.0\.0/16$", description="CIDR of a created VPC (/16)"
    )
    log_retention_days: int = Field(default=30, description="CloudWatch log retention, days")
    allowed_cidrs: list[str] = Field(
        default_factory=lambda: ["0.0.0.0/0"], min_length=1, description="CIDRs allowed to reach the ALB"
    )

    @model_validator(mode="after")
    def _check(self) -> AwsConfig:
        import re

        for group in self.consumer_groups:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", group):
                raise ValueError(f"consumerGroups: {group!r} must be 1-40 letters, digits, '-' or '_'")
        if len(set(self.consumer_groups)) != len(self.consumer_groups):
            raise ValueError("consumerGroups: a group is listed twice")
        if self.log_retention_days not in _LOG_RETENTION:
            raise ValueError(f"logRetentionDays: {self.log_retention_days} is not one of CloudWatch's {_LOG_RETENTION}")
        if self.vpc_id is not None and (len(self.public_subnet_ids) < 2 or len(self.private_subnet_ids) < 2):
            raise ValueError("vpcId needs publicSubnetIds and privateSubnetIds (two zones each)")
        if self.vpc_id is None and (self.public_subnet_ids or self.private_subnet_ids):
            raise ValueError("publicSubnetIds / privateSubnetIds need vpcId")
        return self
