"""Kubernetes v1 Pods for the embedded runtime: the model, ``parse_pod`` and ``pod_to_dict``.

One import for callers; the parts live in ``pod_model`` (frozen dataclasses), ``pod_parse``
(the checks, against ``kube_schema``'s tables of Kubernetes field names) and ``pod_render``.
"""

from __future__ import annotations

from weir.api.errors import ManifestError
from weir.api.meta import ObjectMeta
from weir.api.pod_model import (
    Capabilities,
    Container,
    ContainerPort,
    EnvVar,
    EnvVarSource,
    FieldRef,
    Pod,
    PodSecurityContext,
    PodSpec,
    ResourceFieldRef,
    ResourceRequirements,
    SecurityContext,
    Sysctl,
)
from weir.api.pod_parse import parse_pod
from weir.api.pod_render import pod_to_dict

__all__ = [
    "Capabilities",
    "Container",
    "ContainerPort",
    "EnvVar",
    "EnvVarSource",
    "FieldRef",
    "ManifestError",
    "ObjectMeta",
    "Pod",
    "PodSecurityContext",
    "PodSpec",
    "ResourceFieldRef",
    "ResourceRequirements",
    "SecurityContext",
    "Sysctl",
    "parse_pod",
    "pod_to_dict",
]
