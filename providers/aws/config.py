"""Settings of the aws target: the structured key ``skyferry:aws``.

| key | default | meaning |
|---|---|---|
| ``certificateArn`` | required | ACM certificate of the ALB: HTTPS on 443 (TLS 1.2+), 80 redirects to it |
| ``plainHttp`` | false | the explicit opt-in to serve the API over plain HTTP on 80 instead (no certificate) |
| ``vpcId`` | — | use this VPC (then ``publicSubnetIds`` and ``privateSubnetIds``); none: create one |
| ``publicSubnetIds`` | — | subnets of the ALB (at least 2 zones) |
| ``privateSubnetIds`` | — | subnets of the tasks (at least 2 zones, with a NAT or VPC endpoints) |
| ``vpcCidr`` | ``10.40.0.0/16`` | CIDR of the VPC created when ``vpcId`` is not given |
| ``logRetentionDays`` | 30 | CloudWatch log retention, days |
| ``allowedCidrs`` | ``["0.0.0.0/0"]`` | who may reach the ALB |

The queues are one per consumer group the app subscribes (``skyferry.ledger.CONSUMER_GROUPS``);
their redrive backstop derives from the deliveries the app subscribes with
(``skyferry.ledger.MAX_DELIVERIES``, through ``sns_sqs.redrive_receive_count``): one number, the
app's, governs both.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from providers.base import TargetConfig

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

    certificate_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[A-Za-z0-9-]+$",
        description="ACM certificate ARN of the ALB's HTTPS listener",
    )
    plain_http: bool = Field(
        default=False, description="serve the API over plain HTTP (no certificate): an explicit opt-in"
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
        if self.log_retention_days not in _LOG_RETENTION:
            raise ValueError(f"logRetentionDays: {self.log_retention_days} is not one of CloudWatch's {_LOG_RETENTION}")
        if self.vpc_id is not None and (len(self.public_subnet_ids) < 2 or len(self.private_subnet_ids) < 2):
            raise ValueError("vpcId needs publicSubnetIds and privateSubnetIds (two zones each)")
        if self.vpc_id is None and (self.public_subnet_ids or self.private_subnet_ids):
            raise ValueError("publicSubnetIds / privateSubnetIds need vpcId")
        return self
