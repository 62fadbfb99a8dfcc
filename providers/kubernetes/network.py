"""The kubernetes target's network: the cluster (the stack's kubeconfig context) and the release's namespace.

The chart's Services and NetworkPolicies are the rest of the network; in-cluster names end
in :attr:`Network.svc`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from providers.base import Platform
from providers.kubernetes.config import KubernetesConfig


@dataclass(frozen=True)
class Network:
    """Where the app runs: the provider of the cluster, the namespace (created), and its DNS suffix."""

    provider: k8s.Provider
    namespace: k8s.core.v1.Namespace
    name: str
    svc: str

    def opts(self, platform: Platform[KubernetesConfig], *after: pulumi.Resource) -> pulumi.ResourceOptions:
        """Options of a resource in the namespace: this cluster's provider, after the namespace (and ``after``)."""
        return platform.child_opts(provider=self.provider, depends_on=[self.namespace, *after])


def declare_network(platform: Platform[KubernetesConfig]) -> Network:
    """The ``kubernetes`` provider of the stack's context, and the namespace."""
    release = platform.common.name
    ns = platform.section.namespace
    provider = k8s.Provider(f"{release}-k8s", context=platform.section.context, opts=platform.child_opts())
    namespace = k8s.core.v1.Namespace(
        f"{release}-ns",
        metadata={"name": ns, "labels": platform.tags()},
        opts=platform.child_opts(provider=provider),
    )
    return Network(provider=provider, namespace=namespace, name=ns, svc=f"{ns}.svc.cluster.local")
