"""The GCP target: Firestore (native) event/view store, Pub/Sub broker, Cloud Run, Cloud Storage archive.

``platform.GcpPlatform`` (``skyferry:gcp:Platform``) enables the APIs, creates a Cloud
KMS key ring and key (or uses a given key) for CMEK, the Firestore database (native mode,
pessimistic concurrency, point-in-time recovery, delete protection) with the composite
indexes and index exemptions imported from the adapter module, the Pub/Sub topic and per
consumer group a subscription with ordering and a dead-letter topic + subscription, an
Artifact Registry repository, a dedicated service account with only the roles the
adapters need (bound on each resource where GCP allows it), the API token in Secret
Manager, the archive bucket, and the Cloud Run v2 services ``api`` and ``worker``.
Settings: ``config.GcpConfig`` (``skyferry:gcp``).
"""
