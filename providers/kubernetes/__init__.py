"""The kubernetes target: the skyferry Helm chart on the cluster of the stack's kubeconfig context.

Creates a namespace, a Secret with the store and broker URLs (and the in-chart PostgreSQL
password), and a Helm release of ``charts/skyferry`` with in-chart PostgreSQL and NATS
JetStream, or external endpoints (``skyferry:kubernetes.postgres: external``).
"""
