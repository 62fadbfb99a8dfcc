"""The AWS platform: ``skyferry:aws:Platform``, composed of the target's role modules.

Every child is declared with ``parent=self`` by one step per role, in the order every
target composes them: :mod:`~providers.aws.network`, :mod:`~providers.aws.identity`,
:mod:`~providers.aws.store`, :mod:`~providers.aws.broker`, :mod:`~providers.aws.archive`,
the identity's grants, then :mod:`~providers.aws.compute`.  The table's keys and index, the
queue names and the IAM actions come from the adapter modules, so the infrastructure cannot
drift from what the app expects.
"""

from __future__ import annotations

from providers.aws import archive, broker, compute, identity, network, store
from providers.aws.config import AwsConfig
from providers.base import Platform, StackConfig, StackConfigError, StandardOutputs
from providers.environment import AppUrls


class AwsPlatform(Platform[AwsConfig]):
    """DynamoDB + SNS/SQS FIFO + S3 + ECS Fargate behind an ALB, all under one KMS key."""

    target = "aws"
    config_model = AwsConfig

    @classmethod
    def validate(cls, config: StackConfig[AwsConfig]) -> None:
        """The sizes fit a Fargate task; TLS by default: a certificate, unless plain HTTP is chosen explicitly."""
        compute.fargate_size(config.common.cpu_millicores, config.common.memory_mib)
        section = config.target
        if section.certificate_arn is None and not section.plain_http:
            raise StackConfigError(
                "skyferry:aws.certificateArn",
                "required: the ALB serves the API over HTTPS with this ACM certificate "
                "(or set skyferry:aws.plainHttp to true to serve plain HTTP, not recommended)",
            )
        if section.certificate_arn is not None and section.plain_http:
            raise StackConfigError("skyferry:aws.plainHttp", "true, but certificateArn is given: choose one")

    def build(self) -> StandardOutputs:
        """Declare every role's resources, in the order shared by all targets; return the standard outputs."""
        where = network.declare_network(self)
        who = identity.declare_identity(self, where)
        events = store.declare_store(self, where, who)
        messages = broker.declare_broker(self, where, who)
        exports = archive.declare_archive(self, where, who)
        access = identity.grant_access(self, where, who, events, messages, exports)
        urls = AppUrls(store=events.url, broker=messages.url, archive=exports.url)
        app = compute.declare_compute(self, where, who, access, urls)
        return StandardOutputs(
            target=self.target,
            api_url=app.api_url,
            store_url=events.url,
            broker_url=messages.url,
            archive_url=exports.url,
            image=self.common.image,
        )
