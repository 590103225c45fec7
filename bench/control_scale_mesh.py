"""The synthetic mesh of the control-plane benchmark: manifests, the proxies' node identities,
and the config changes whose push is timed. Pure (no I/O).

Shape (``Mesh(services, proxies)``): ``services`` Kubernetes Services in namespaces of
:data:`PER_NAMESPACE` (``bench-00``, ``bench-01`` ...), each with one HTTP port (``http``,
80 -> ``targetPort: http`` = 8080) and a selector ``app: <service>``; ``proxies`` Pods spread
round-robin over the services (two per service at 1,000 / 2,000), labelled ``app``,
``version`` (v1/v2 alternating) and ``security.istio.io/tlsMode: istio`` (an injected
sidecar), each with ``status: {phase: Running, podIP: ...}``, which is what makes a store
Pod an endpoint (:func:`weir.control.registry.pod_ip`). Per namespace, the first service has
a DestinationRule (subsets v1/v2) and a VirtualService (a weighted split and a timeout), so
that route compilation is not only the default route. One simulated proxy per Pod: its
node is what :func:`weir.agent.bootstrap.node_metadata` sends for that pod.

The changes: :func:`edited_virtual_service` (new weights for the first namespace's split:
only route tables change) and :func:`added_service` (one more Service with no pods: every
proxy gets one more cluster, listener and route table).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from weir.agent.bootstrap import BootstrapParams, node_id, node_metadata

PER_NAMESPACE = 50
POD_CIDR = ipaddress.IPv4Network("10.200.0.0/16")
SERVICE_PORT = 80
TARGET_PORT = 8080
TLS_MODE_LABEL = "security.istio.io/tlsMode"
JSON = dict[str, Any]


@dataclass(frozen=True)
class Proxy:
    """One simulated sidecar: its pod and the node it introduces itself with."""

    pod: str
    namespace: str
    ip: str
    node_id: str
    metadata: JSON


@dataclass(frozen=True)
class Mesh:
    services: int
    proxies: int

    def __post_init__(self) -> None:
        if self.services < 1 or self.proxies < 1:
            raise ValueError(f"a mesh needs at least one service and one proxy (got {self.services}, {self.proxies})")
        if self.proxies > POD_CIDR.num_addresses - 2:
            raise ValueError(f"{self.proxies} proxies do not fit in {POD_CIDR}")

    @property
    def namespaces(self) -> list[str]:
        return [namespace(i) for i in range(0, self.services, PER_NAMESPACE)]

    def service_of(self, pod_index: int) -> int:
        return pod_index % self.services

    def manifests(self) -> list[JSON]:
        """Everything ``weir apply`` gets: Services, Pods (with their status), DestinationRules, VirtualServices."""
        docs: list[JSON] = [service(i) for i in range(self.services)]
        docs += [self.pod(p) for p in range(self.proxies)]
        for first in range(0, self.services, PER_NAMESPACE):
            docs += [destination_rule(first), virtual_service(first, 90)]
        return docs

    def pod(self, p: int) -> JSON:
        s = self.service_of(p)
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name(p), "namespace": namespace(s), "labels": pod_labels(s, p)},
                "spec": {"containers": [{"name": "app", "image": "bench/app", "command": ["/app"],
                                         "ports": [{"name": "http", "containerPort": TARGET_PORT}]}]},
                "status": {"phase": "Running", "podIP": pod_ip(p)}}

    def proxy(self, p: int) -> Proxy:
        s = self.service_of(p)
        params = BootstrapParams(pod_name=pod_name(p), namespace=namespace(s), pod_ips=(pod_ip(p),),
                                 labels=pod_labels(s, p))
        return Proxy(pod_name(p), namespace(s), pod_ip(p), node_id(params), node_metadata(params))


def namespace(service_index: int) -> str:
    return f"bench-{service_index // PER_NAMESPACE:02d}"


def service_name(i: int) -> str:
    return f"svc-{i:04d}"


def pod_name(p: int) -> str:
    return f"pod-{p:04d}"


def pod_ip(p: int) -> str:
    return str(POD_CIDR.network_address + 1 + p)


def pod_labels(s: int, p: int) -> dict[str, str]:
    return {"app": service_name(s), "version": "v1" if (p // 2) % 2 == 0 else "v2", TLS_MODE_LABEL: "istio"}


def service(i: int, name: str | None = None) -> JSON:
    name = name or service_name(i)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace(i)},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http"}]}}


def destination_rule(i: int) -> JSON:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": service_name(i), "namespace": namespace(i)},
            "spec": {"host": service_name(i), "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                          {"name": "v2", "labels": {"version": "v2"}}]}}


def virtual_service(i: int, v1_weight: int) -> JSON:
    host = service_name(i)
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": host, "namespace": namespace(i)},
            "spec": {"hosts": [host], "http": [{"route": [
                {"destination": {"host": host, "subset": "v1"}, "weight": v1_weight},
                {"destination": {"host": host, "subset": "v2"}, "weight": 100 - v1_weight}], "timeout": "5s"}]}}


def edited_virtual_service(round_: int) -> JSON:
    """The first namespace's VirtualService with new weights (never the initial 90/10)."""
    return virtual_service(0, 80 - 10 * (round_ % 7))


def added_service(round_: int) -> JSON:
    """One more Service in the first namespace (no pods select it)."""
    return service(0, name=f"added-{round_:03d}")


CHANGES = {"edit-virtualservice": edited_virtual_service, "add-service": added_service}
"""Change kind -> the manifest that makes round ``n``'s change."""
