"""Kubernetes ``core/v1`` Namespaces and ServiceAccounts: models and parsers.

A Namespace matters to the mesh through its labels: ``istio-injection`` (``enabled`` or
``disabled``) and ``istio.io/rev`` (the control plane revision) decide sidecar injection. A
ServiceAccount names a workload identity (``spiffe://<trust domain>/ns/<ns>/sa/<name>``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from weir.api import core_schema as cs
from weir.api import names
from weir.api import read as rd
from weir.api.errors import field_path, quoted
from weir.api.meta import Header, ObjectMeta, open_manifest, parse_metadata

INJECTION_LABEL = "istio-injection"
REVISION_LABEL = "istio.io/rev"
INJECTION_VALUES = ("enabled", "disabled")

NAMESPACE = Header("Namespace", ("v1",), cs.NAMESPACE, namespaced=False)
SERVICE_ACCOUNT = Header("ServiceAccount", ("v1",), cs.SERVICE_ACCOUNT)


@dataclass(frozen=True, kw_only=True)
class Namespace:
    metadata: ObjectMeta
    """``metadata.namespace`` is ``""``: a Namespace is cluster-scoped."""
    api_version: str = "v1"
    kind: str = "Namespace"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def injection(self) -> Literal["enabled", "disabled"] | None:
        """The ``istio-injection`` label, if set."""
        value = self.metadata.labels.get(INJECTION_LABEL)
        return "enabled" if value == "enabled" else "disabled" if value == "disabled" else None

    @property
    def revision(self) -> str | None:
        """The ``istio.io/rev`` label: the control plane revision that injects here, if set."""
        return self.metadata.labels.get(REVISION_LABEL)


@dataclass(frozen=True, kw_only=True)
class ServiceAccount:
    metadata: ObjectMeta
    automount_token: bool | None = None
    """``automountServiceAccountToken``; ``None`` when unset."""
    api_version: str = "v1"
    kind: str = "ServiceAccount"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def parse_namespace(doc: object, source: str = "<namespace>") -> Namespace:
    """Check and build a Namespace. Raises :class:`~weir.api.errors.ManifestError` listing every problem."""
    problems, doc = open_manifest(doc, source, NAMESPACE)
    metadata = parse_metadata(doc, problems, NAMESPACE, name_rule=names.dns1123_label)
    injection = metadata.labels.get(INJECTION_LABEL)
    if injection is not None and injection not in INJECTION_VALUES:
        problems.add(field_path("metadata.labels", INJECTION_LABEL),
                     f'unsupported value {quoted(injection)} (expected "enabled" or "disabled"; '
                     "any other value leaves injection off)")
    revision = metadata.labels.get(REVISION_LABEL)
    if revision == "":
        problems.add(field_path("metadata.labels", REVISION_LABEL), "must name a revision (e.g. \"default\")")
    problems.raise_if_any()
    return Namespace(metadata=metadata, raw=copy.deepcopy(doc))


def parse_service_account(doc: object, source: str = "<serviceaccount>") -> ServiceAccount:
    """Check and build a ServiceAccount. Raises :class:`~weir.api.errors.ManifestError` listing every problem."""
    problems, doc = open_manifest(doc, source, SERVICE_ACCOUNT)
    metadata = parse_metadata(doc, problems, SERVICE_ACCOUNT)
    problems.raise_if_any()
    return ServiceAccount(metadata=metadata, automount_token=rd.boolean(doc, "automountServiceAccountToken"),
                          raw=copy.deepcopy(doc))
