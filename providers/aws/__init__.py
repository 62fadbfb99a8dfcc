"""The AWS target: DynamoDB event/view store, SNS FIFO -> SQS FIFO broker, ECS Fargate, S3 archive.

``platform.AwsPlatform`` (``skyferry:aws:Platform``) creates a customer-managed KMS key,
the DynamoDB table (key schema and index imported from the adapter), the SNS FIFO topic
and one SQS FIFO queue with a dead-letter queue per consumer group, an ECR repository, a
VPC (or uses a given one), an ALB, the ECS Fargate cluster with the api and worker
services, their IAM roles (the task role allows exactly the adapters' API calls on
exactly their resources), the API token in Secrets Manager, CloudWatch log groups and the
S3 archive bucket.  Settings: ``config.AwsConfig`` (``skyferry:aws``).
"""
