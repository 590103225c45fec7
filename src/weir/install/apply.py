"""Server-side apply requests for rendered manifests (``weir install --apply``), built without I/O.

One request per object, in Helm's install order, preceded by the target Namespace (istioctl
creates it too). Each is a server-side apply (``PATCH`` with ``application/apply-patch+yaml``)
under one field manager, with ``force`` so that weir takes over fields another manager set
(what ``istioctl install`` and ``kubectl apply --server-side --force-conflicts`` do). The CLI
sends them with the ``kubernetes`` client's dynamic ``server_side_apply``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

FIELD_MANAGER = "weir-install"

# Helm's releaseutil.InstallOrder (the kinds before DaemonSet, and the workloads after it).
INSTALL_ORDER = (
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy", "PodDisruptionBudget",
    "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass", "PersistentVolume",
    "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
    "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job",
    "CronJob", "IngressClass", "Ingress", "APIService",
)
_RANK = {kind: i for i, kind in enumerate(INSTALL_ORDER)}


@dataclass(frozen=True)
class ApplyRequest:
    api_version: str
    kind: str
    name: str
    namespace: str | None  # None: a cluster-scoped object
    body: Mapping[str, Any]
    field_manager: str = FIELD_MANAGER
    force: bool = True
    content_type: str = "application/apply-patch+yaml"

    def describe(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return (f"PATCH {self.api_version} {self.kind} {where} (server-side apply, fieldManager={self.field_manager}"
                f"{', force' if self.force else ''})")


def plan(documents: Iterable[Any], namespace: str, field_manager: str = FIELD_MANAGER) -> list[ApplyRequest]:
    """The requests that apply ``documents`` (parsed manifests; empty ones are skipped) into ``namespace``.

    A namespaced object without ``metadata.namespace`` goes to ``namespace``; objects that name
    another namespace keep it. Raises ``ValueError`` for a manifest without apiVersion, kind or name.
    """
    namespace_body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    requests = [ApplyRequest("v1", "Namespace", namespace, None, namespace_body, field_manager)]
    objects: list[tuple[int, str, str, str, dict[str, Any], dict[str, Any]]] = []
    for index, doc in enumerate(documents):
        if not doc:
            continue
        if not isinstance(doc, dict):
            raise ValueError(f"manifest {index}: expected a mapping, got {type(doc).__name__}")
        meta = doc.get("metadata")
        api_version, kind = doc.get("apiVersion"), doc.get("kind")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not (isinstance(meta, dict) and isinstance(api_version, str) and isinstance(kind, str)
                and isinstance(name, str) and name):
            raise ValueError(f"manifest {index}: apiVersion, kind and metadata.name are required")
        if kind == "Namespace" and name == namespace:
            continue  # already first
        objects.append((index, api_version, kind, name, meta, doc))
    objects.sort(key=lambda o: (_RANK.get(o[2], len(INSTALL_ORDER)), o[0]))
    for _, api_version, kind, name, meta, doc in objects:
        target: str | None = None
        body = doc
        if kind not in _CLUSTER_SCOPED:
            target = meta.get("namespace") or namespace
            body = {**doc, "metadata": {**meta, "namespace": target}}
        requests.append(ApplyRequest(api_version, kind, name, target, body, field_manager))
    return requests


# Cluster-scoped kinds a chart may render (everything else is namespaced).
_CLUSTER_SCOPED = frozenset({
    "Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterRoleList", "ClusterRoleBindingList",
    "CustomResourceDefinition", "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass",
    "APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "PodSecurityPolicy",
    "RuntimeClass", "CSIDriver", "Node",
})
