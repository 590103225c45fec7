"""The sidecar injector (Istio's injection webhook and ``istioctl kube-inject``), pure.

:func:`inject` takes a Pod manifest (a decoded dict, as the admission webhook receives it)
and returns the injected Pod; :func:`inject_template_spec` does the same to the pod template
of a workload (Deployment, StatefulSet, CronJob ...), as ``istioctl kube-inject`` does. No
I/O: the namespace's labels, the Helm values (:class:`InjectValues`) and the mesh config
(:class:`MeshInfo`) are arguments. The input is never modified.

**Whether to inject** (Istio's rules, in this order): hostNetwork pods never; Kubernetes'
system namespaces never; a pod that already has ``sidecar.istio.io/status`` is returned
unchanged (Istio would strip and re-inject it; weir keeps injection idempotent). Then the
webhook's selectors, which see labels only: namespace ``istio-injection=enabled`` (the default
revision), else namespace ``istio.io/rev=<revision>``, else the pod's own ``istio.io/rev`` or
``sidecar.istio.io/inject=true`` label (``istio-injection=disabled`` or a foreign revision
selects nothing). Last Istio's policy: ``sidecar.istio.io/inject`` label, else annotation
(the label takes precedence), ``y``/``yes``/``true``/``on`` in any case injects, any other
non-empty value does not. So the annotation can turn injection off but cannot, alone, select
a pod in an unlabelled namespace: as in Istio, the webhook is never called for it.

**What is added** is Istio 1.32's template with native sidecars: ``istio-proxy`` in
``initContainers`` with ``restartPolicy: Always``, after ``istio-validation`` (with
``values.pilot.cni.enabled``: no capabilities, runs as the proxy's uid/gid, ``--run-validation
--skip-rule-apply``) or ``istio-init`` (without CNI: NET_ADMIN/NET_RAW, uid 0). The pod gets
the ``sidecar.istio.io/status`` annotation, the traffic annotations the CNI plugin reads
(``weir.capture.pod``), the canonical-service and tlsMode labels, and the Prometheus merge
annotations. A user's own ``istio-proxy`` container is merged over the template's and recorded
in ``proxy.istio.io/overrides``; its runAsUser/runAsGroup then also apply to the validation
container and its ``-u``.

**Flavors.** ``kubernetes`` emits images, volumes and mounts, as Istio. ``embedded`` is for
weir's embedded runtime, which has no images or volumes: every injected container gets a
``command`` (``weir capture validate --timeout 5``, ``weir proxy-agent proxy sidecar ...``) and
nothing that needs privileges, so ``istio-init`` (no CNI) and TPROXY are errors there.

Not reproduced: HTTP probe rewriting (``rewriteAppHTTPProbe``, ``ISTIO_KUBE_APP_PROBERS``),
Multus networks (``pilot.cni.provider=multus``), custom templates, ``neverInjectSelector`` and
``alwaysInjectSelector``, ``enable-core-dump``, ``sidecar.istio.io/bootstrapOverride``, user
volumes and ``imagePullSecrets``, ``capNetBindService``, ``init-containers-before-proxy``,
OpenShift uid ranges, re-injection of an injected pod (see above), and Go's serialization
(canonical resource quantities, ``resources: {}`` on untouched containers): values are passed
through as written.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Final, Literal

from weir.capture import pod as cp
from weir.capture import spec as cs

Flavor = Literal["kubernetes", "embedded"]
Manifest = dict[str, Any]

PROXY: Final = "istio-proxy"
VALIDATION: Final = "istio-validation"
INIT: Final = "istio-init"
INJECT: Final = "sidecar.istio.io/inject"
STATUS: Final = "sidecar.istio.io/status"
OVERRIDES: Final = "proxy.istio.io/overrides"
REV: Final = "istio.io/rev"
NAMESPACE_INJECTION: Final = "istio-injection"
NETWORK_LABEL: Final = "topology.istio.io/network"
IGNORED_NAMESPACES: Final = frozenset({"kube-system", "kube-public", "kube-node-lease", "local-path-storage"})
VALIDATE_COMMAND: Final = ("weir", "capture", "validate", "--timeout", "5")
PROXY_AGENT_COMMAND: Final = ("weir", "proxy-agent")
AUTO_IMAGE: Final = "auto"
_TRUE_WORDS: Final = ("y", "yes", "true", "on")
_NO_LABELS: Mapping[str, str] = MappingProxyType({})
_DEFAULT_RESOURCES: Mapping[str, Any] = MappingProxyType({
    "limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "128Mi"}})


class InjectError(ValueError):
    """The pod cannot be injected: a bad annotation or value (named), or a flavor limit."""


@dataclass(frozen=True, kw_only=True)
class InjectValues:
    """The Helm values the injector reads; each field names its Helm value (``values.``...)."""

    flavor: Flavor = "kubernetes"  # weir: the runtime the pod is for
    cni_enabled: bool = True  # pilot.cni.enabled
    revision: str = ""  # revision ("" is the default revision)
    auto_inject: bool = True  # global.proxy.autoInject (enabled/disabled): the policy
    enable_namespaces_by_default: bool = False  # sidecarInjectorWebhook.enableNamespacesByDefault
    hub: str = "docker.io/istio"  # global.hub
    tag: str = "1.32.0"  # global.tag
    proxy_image: str = "proxyv2"  # global.proxy.image (a name, or a full reference with "/")
    proxy_init_image: str = "proxyv2"  # global.proxy_init.image
    image_pull_policy: str = ""  # global.imagePullPolicy
    network: str = ""  # global.network
    cluster_name: str = ""  # global.multiCluster.clusterName
    mesh_id: str = ""  # global.meshID
    istio_namespace: str = "istio-system"  # global.istioNamespace
    pilot_cert_provider: str = "istiod"  # global.pilotCertProvider
    ca_address: str = ""  # global.caAddress
    logging_level: str = "default:info"  # global.logging.level
    token_audience: str = "istio-ca"  # noqa: S105  (an audience, not a secret) global.sds.token.aud
    include_ip_ranges: str = "*"  # global.proxy.includeIPRanges
    exclude_ip_ranges: str = ""  # global.proxy.excludeIPRanges
    include_inbound_ports: str = "*"  # global.proxy.includeInboundPorts
    exclude_inbound_ports: str = ""  # global.proxy.excludeInboundPorts
    include_outbound_ports: str = ""  # global.proxy.includeOutboundPorts
    exclude_outbound_ports: str = ""  # global.proxy.excludeOutboundPorts
    status_port: int = 15020  # global.proxy.statusPort (0 turns the readiness probe off)
    cluster_domain: str = "cluster.local"  # global.proxy.clusterDomain
    log_level: str = "warning"  # global.proxy.logLevel
    component_log_level: str = "misc:error"  # global.proxy.componentLogLevel
    privileged: bool = False  # global.proxy.privileged
    hold_application_until_proxy_starts: bool = False  # global.proxy.holdApplicationUntilProxyStarts
    readiness_initial_delay_seconds: int = 0  # global.proxy.readinessInitialDelaySeconds
    readiness_period_seconds: int = 15  # global.proxy.readinessPeriodSeconds
    readiness_failure_threshold: int = 4  # global.proxy.readinessFailureThreshold
    startup_probe: bool = True  # global.proxy.startupProbe.enabled
    startup_failure_threshold: int = 600  # global.proxy.startupProbe.failureThreshold
    resources: Mapping[str, Any] = field(default_factory=lambda: _DEFAULT_RESOURCES)  # global.proxy.resources

    def __post_init__(self) -> None:
        if self.flavor not in ("kubernetes", "embedded"):
            raise InjectError(f"flavor: expected kubernetes or embedded, got {self.flavor!r}")
        if self.flavor == "embedded" and not self.cni_enabled:
            raise InjectError("pilot.cni.enabled=false needs an istio-init container with NET_ADMIN/NET_RAW; "
                              "the embedded runtime gives pods no privileges (capture is the CNI's job there)")
        if not 0 <= self.status_port <= 65535:
            raise InjectError(f"global.proxy.statusPort: expected 0-65535, got {self.status_port}")

    @classmethod
    def from_helm(cls, values: Mapping[str, Any], *, flavor: Flavor = "kubernetes") -> InjectValues:
        """Read Istio's Helm ``values`` (the injector ConfigMap's ``values``); unset keys keep defaults."""
        kwargs: dict[str, Any] = {"flavor": flavor}
        for path, name in _HELM.items():
            node: Any = values
            for part in path.split("."):
                node = node.get(part) if isinstance(node, Mapping) else None
            if node is not None:
                kwargs[name] = _coerce(path, node, _FIELD_TYPES[name])
        return cls(**kwargs)


_HELM: Final = {
    "pilot.cni.enabled": "cni_enabled", "revision": "revision", "global.proxy.autoInject": "auto_inject",
    "sidecarInjectorWebhook.enableNamespacesByDefault": "enable_namespaces_by_default",
    "global.hub": "hub", "global.tag": "tag", "global.proxy.image": "proxy_image",
    "global.proxy_init.image": "proxy_init_image", "global.imagePullPolicy": "image_pull_policy",
    "global.network": "network", "global.multiCluster.clusterName": "cluster_name", "global.meshID": "mesh_id",
    "global.istioNamespace": "istio_namespace", "global.pilotCertProvider": "pilot_cert_provider",
    "global.caAddress": "ca_address", "global.logging.level": "logging_level",
    "global.sds.token.aud": "token_audience", "global.proxy.includeIPRanges": "include_ip_ranges",
    "global.proxy.excludeIPRanges": "exclude_ip_ranges",
    "global.proxy.excludeOutboundIPRanges": "exclude_ip_ranges",  # the newer name wins when both are set
    "global.proxy.includeInboundPorts": "include_inbound_ports",
    "global.proxy.excludeInboundPorts": "exclude_inbound_ports",
    "global.proxy.includeOutboundPorts": "include_outbound_ports",
    "global.proxy.excludeOutboundPorts": "exclude_outbound_ports", "global.proxy.statusPort": "status_port",
    "global.proxy.clusterDomain": "cluster_domain", "global.proxy.logLevel": "log_level",
    "global.proxy.componentLogLevel": "component_log_level", "global.proxy.privileged": "privileged",
    "global.proxy.holdApplicationUntilProxyStarts": "hold_application_until_proxy_starts",
    "global.proxy.readinessInitialDelaySeconds": "readiness_initial_delay_seconds",
    "global.proxy.readinessPeriodSeconds": "readiness_period_seconds",
    "global.proxy.readinessFailureThreshold": "readiness_failure_threshold",
    "global.proxy.startupProbe.enabled": "startup_probe",
    "global.proxy.startupProbe.failureThreshold": "startup_failure_threshold",
    "global.proxy.resources": "resources",
}
_FIELD_TYPES: Final = {f.name: str(f.type) for f in fields(InjectValues)}


def _coerce(path: str, value: Any, kind: str) -> Any:
    if kind == "bool":
        if path == "global.proxy.autoInject" and value in ("enabled", "disabled"):
            return value == "enabled"
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.isascii() and value.isdigit():
            return int(value)
    elif kind == "str":
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)  # a YAML tag like 1.32 is a number
    elif isinstance(value, Mapping):
        return MappingProxyType(copy.deepcopy(dict(value)))
    raise InjectError(f"values.{path}: invalid value {value!r}: expected {kind}")


@dataclass(frozen=True, kw_only=True)
class MeshInfo:
    """What the injector reads from the mesh config (``meshConfig``)."""

    trust_domain: str = "cluster.local"  # trustDomain
    interception_mode: str = "REDIRECT"  # defaultConfig.interceptionMode
    proxy_listen_port: int = 15001  # proxyListenPort
    proxy_inbound_listen_port: int = 15006  # proxyInboundListenPort
    enable_prometheus_merge: bool = True  # enablePrometheusMerge
    hold_application_until_proxy_starts: bool = False  # defaultConfig.holdApplicationUntilProxyStarts
    proxy_metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """defaultConfig.proxyMetadata: env for istio-proxy (and the capture init container)."""
    proxy_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """The ProxyConfig overrides the proxy gets as ``PROXY_CONFIG`` (JSON)."""

    def __post_init__(self) -> None:
        if self.interception_mode not in ("REDIRECT", "TPROXY", "NONE"):
            raise InjectError(f"meshConfig.defaultConfig.interceptionMode: unknown mode {self.interception_mode!r}")


@dataclass(frozen=True)
class InjectResult:
    """``pod`` is a new manifest (the input copied when not injected); ``reason`` says why not."""

    pod: Manifest
    injected: bool
    reason: str = ""


@dataclass(frozen=True)
class _Owner:
    """Istio's "deployment meta": the workload a pod belongs to, for names and ISTIO_META_OWNER."""

    name: str
    namespace: str
    api_version: str
    kind: str


# --- decision -----------------------------------------------------------------------------------


def _selected(namespace_labels: Mapping[str, str], labels: Mapping[str, str], values: InjectValues) -> str:
    """The MutatingWebhookConfiguration's selectors: "" when one selects the pod, else why not."""
    revision = values.revision or "default"
    default_rev = revision == "default"
    opted_out = labels.get(INJECT) == "false"
    if NAMESPACE_INJECTION in namespace_labels:
        value = namespace_labels[NAMESPACE_INJECTION]
        if value != "enabled":
            return f"the namespace has {NAMESPACE_INJECTION}={value}"
        if not default_rev:
            return f"{NAMESPACE_INJECTION}=enabled selects the default revision, not {revision}"
        return f"the pod has the label {INJECT}=false" if opted_out else ""
    if REV in namespace_labels:
        if namespace_labels[REV] != revision:
            return f"the namespace selects revision {namespace_labels[REV]}, not {revision}"
        return f"the pod has the label {INJECT}=false" if opted_out else ""
    if REV in labels:
        if labels[REV] != revision:
            return f"the pod selects revision {labels[REV]}, not {revision}"
        return f"the pod has the label {INJECT}=false" if opted_out else ""
    if default_rev and labels.get(INJECT) == "true":
        return ""
    if default_rev and values.enable_namespaces_by_default and not opted_out:
        return ""
    return (f"neither the namespace ({NAMESPACE_INJECTION}=enabled or {REV}) nor the pod ({INJECT}=true or "
            f"{REV} label) asks for injection")


def _policy(labels: Mapping[str, str], annotations: Mapping[str, str], auto_inject: bool) -> str:
    """Istio's injectRequired: the label over the annotation; "" means inject."""
    source, value = ("label", labels[INJECT]) if INJECT in labels else ("annotation", annotations.get(INJECT, ""))
    if value == "":
        return "" if auto_inject else "injection policy is disabled and the pod does not ask for injection"
    if value.lower() in _TRUE_WORDS:
        return ""
    return f"the {source} {INJECT}={value}"


def _skipped(meta: Mapping[str, Any], spec: Mapping[str, Any], namespace: str) -> str:
    if spec.get("hostNetwork") is True:
        return "hostNetwork pods are never injected"
    if namespace in IGNORED_NAMESPACES:
        return f"namespace {namespace} is never injected"
    if STATUS in _strings(meta, "annotations"):
        return f"already injected ({STATUS} is present)"
    return ""


# --- entry points -------------------------------------------------------------------------------


def inject(pod: Mapping[str, Any], *, values: InjectValues, namespace_labels: Mapping[str, str] = _NO_LABELS,
           mesh: MeshInfo) -> InjectResult:
    """The admission webhook: inject ``pod`` (a Pod manifest) if Istio's rules say so."""
    doc = _checked_doc(pod, ("Pod",))
    meta, spec = _mapping(doc, "metadata"), _mapping(doc, "spec")
    namespace = str(meta.get("namespace") or "default")
    labels, annotations = _strings(meta, "labels"), _strings(meta, "annotations")
    reason = (_skipped(meta, spec, namespace) or _selected(namespace_labels, labels, values)
              or _policy(labels, annotations, values.auto_inject))
    if reason:
        return InjectResult(doc, injected=False, reason=reason)
    doc["metadata"], doc["spec"] = _inject(meta, spec, _pod_owner(meta), values, mesh)
    return InjectResult(doc, injected=True)


_TEMPLATE_KINDS: Final = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController")


def inject_template_spec(workload: Mapping[str, Any], *, values: InjectValues, mesh: MeshInfo) -> InjectResult:
    """``istioctl kube-inject``: inject the pod template of a workload (or a Pod), whatever its
    namespace's labels say. Skipped, as there, for hostNetwork, system namespaces, pods that opt
    out and templates already injected."""
    doc = _checked_doc(workload, ("Pod", "CronJob", *_TEMPLATE_KINDS))
    kind = str(doc.get("kind") or "Pod")
    if kind == "Pod":
        holder, owner_meta = doc, _mapping(doc, "metadata")
        owner = _pod_owner(owner_meta)
    else:
        parent = _mapping(doc, "spec")
        if kind == "CronJob":
            parent = _mapping(_mapping(parent, "jobTemplate"), "spec")
        template = parent.get("template")
        if not isinstance(template, dict):
            raise InjectError(f"{kind}: spec.template is required")
        holder = template
        owner_meta = _mapping(doc, "metadata")
        owner = _Owner(str(owner_meta.get("name") or ""), str(owner_meta.get("namespace") or ""),
                       str(doc.get("apiVersion") or ""), kind)
    meta, spec = _mapping(holder, "metadata"), _mapping(holder, "spec")
    namespace = str(meta.get("namespace") or owner.namespace or "default")
    reason = _skipped(meta, spec, namespace) or _policy(_strings(meta, "labels"), _strings(meta, "annotations"), True)
    if reason:
        return InjectResult(doc, injected=False, reason=reason)
    holder["metadata"], holder["spec"] = _inject(meta, spec, owner, values, mesh)
    return InjectResult(doc, injected=True)


def _checked_doc(doc: Mapping[str, Any], kinds: tuple[str, ...]) -> Manifest:
    if not isinstance(doc, Mapping):
        raise InjectError(f"expected a manifest (a mapping), got {type(doc).__name__}")
    kind = doc.get("kind") or "Pod"
    if kind not in kinds:
        raise InjectError(f"kind: cannot inject a {kind} (expected one of {', '.join(kinds)})")
    out = copy.deepcopy(dict(doc))
    for key in ("metadata", "spec"):
        if out.get(key) is not None and not isinstance(out[key], dict):
            raise InjectError(f"{key}: expected a mapping, got {out[key]!r}")
    return out


def _mapping(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key) if key else doc
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InjectError(f"{key}: expected a mapping, got {value!r}")
    return value


def _strings(meta: Mapping[str, Any], key: str) -> dict[str, str]:
    value = _mapping(meta, key)
    for k, v in value.items():
        if not isinstance(v, str):
            raise InjectError(f"metadata.{key}.{k}: invalid value {v!r}: values must be strings")
    return dict(value)


_CRONJOB_JOB: Final = re.compile(r"^(.+)-\d{8,10}$")


def _pod_owner(meta: Mapping[str, Any]) -> _Owner:
    """Istio's GetDeployMetaFromPod: a generated pod's controller, with the Deployment and
    CronJob heuristics (ReplicaSet ``<deployment>-<pod-template-hash>``, Job ``<cronjob>-<time>``)."""
    name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "")
    owner = _Owner(name, namespace, "v1", "Pod")
    if meta.get("generateName"):
        refs = [r for r in meta.get("ownerReferences") or [] if isinstance(r, Mapping) and r.get("controller") is True]
        if refs:
            ref = refs[0]
            api, kind, ref_name = str(ref.get("apiVersion", "")), str(ref.get("kind", "")), str(ref.get("name", ""))
            pod_hash = str((meta.get("labels") or {}).get("pod-template-hash") or "")
            job = _CRONJOB_JOB.match(ref_name)
            if kind == "ReplicaSet" and pod_hash and ref_name.endswith(pod_hash):
                owner = _Owner(ref_name.removesuffix("-" + pod_hash), namespace, api, "Deployment")
            elif kind == "Job" and job:
                owner = _Owner(job.group(1), namespace, "batch/v1", "CronJob")
            else:
                owner = _Owner(ref_name, namespace, api, kind)
    return owner if owner.name else _Owner(name, namespace, owner.api_version, owner.kind)


# --- the template -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ctx:
    values: InjectValues
    mesh: MeshInfo
    ann: Mapping[str, str]
    labels: Mapping[str, str]
    owner: _Owner
    mode: str
    status_port: str
    native: bool

    def get(self, annotation: str, default: object) -> str:
        """Istio's template ``annotation`` function: the pod's annotation, else the default."""
        return self.ann[annotation] if annotation in self.ann else str(default)

    @property
    def embedded(self) -> bool:
        return self.values.flavor == "embedded"


_PORT_LISTS: Final = (  # annotation, Helm value, wildcard allowed
    (cp.ANNOTATION_INCLUDE_INBOUND_PORTS, "include_inbound_ports", True),
    (cp.ANNOTATION_EXCLUDE_INBOUND_PORTS, "exclude_inbound_ports", False),
    (cp.ANNOTATION_INCLUDE_OUTBOUND_PORTS, "include_outbound_ports", False),
    (cp.ANNOTATION_EXCLUDE_OUTBOUND_PORTS, "exclude_outbound_ports", False),
)
_CIDR_LISTS: Final = (
    (cp.ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES, "include_ip_ranges", True),
    (cp.ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES, "exclude_ip_ranges", False),
)
_INTERFACES: Final = (cp.ANNOTATION_EXCLUDE_INTERFACES, cp.ANNOTATION_KUBEVIRT_INTERFACES,
                      cp.ANNOTATION_REROUTE_VIRTUAL_INTERFACES)
_INT_ANNOTATIONS: Final = {
    "readiness.status.sidecar.istio.io/initialDelaySeconds": "readiness_initial_delay_seconds",
    "readiness.status.sidecar.istio.io/periodSeconds": "readiness_period_seconds",
    "readiness.status.sidecar.istio.io/failureThreshold": "readiness_failure_threshold",
}


def _validated(ann: Mapping[str, str], values: InjectValues, mesh: MeshInfo) -> tuple[str, str]:
    """Istio's validateAnnotations, and the values they default to: (mode, status port)."""
    try:
        mode = cs.parse_mode(cp.ANNOTATION_INTERCEPTION_MODE,
                             ann.get(cp.ANNOTATION_INTERCEPTION_MODE, mesh.interception_mode)).value
        for key, name, wildcard in _PORT_LISTS:
            cs.parse_port_list(key if key in ann else f"values.{name}", ann.get(key, getattr(values, name)),
                               allow_wildcard=wildcard)
        for key, name, wildcard in _CIDR_LISTS:
            cs.parse_cidr_list(key if key in ann else f"values.{name}", ann.get(key, getattr(values, name)),
                               allow_wildcard=wildcard)
        for key in _INTERFACES:
            cs.parse_interfaces(key, ann.get(key, ""))
        status = ann.get(cp.ANNOTATION_STATUS_PORT, str(values.status_port)).strip()
        if status != "0":
            cs.parse_port(cp.ANNOTATION_STATUS_PORT, status)
        for key in _INT_ANNOTATIONS:
            if key in ann and not (ann[key].isascii() and ann[key].isdigit()):
                raise cs.InvalidSpecError(key, ann[key], "expected a whole number of seconds or times")
    except cs.InvalidSpecError as exc:
        raise InjectError(str(exc)) from None
    return mode, status


def _exclude_inbound(status_port: str, excluded: str) -> str:
    """Istio's excludeInboundPort: add the status port to the list unless it is there."""
    port = status_port.strip()
    if port in ("", "0"):
        return excluded
    parts = excluded.split(",")
    if port in parts:
        return excluded
    return ",".join([*(p.strip() for p in parts if p.strip()), port])


def _image(ctx: _Ctx, name: str) -> str:
    override = ctx.ann.get("sidecar.istio.io/proxyImage", name)
    if "/" in override:
        return override
    return f"{ctx.values.hub}/{ctx.values.proxy_image}:{ctx.values.tag}"


def _resources(ctx: _Ctx) -> dict[str, Any]:
    by_annotation = {("requests", "cpu"): "sidecar.istio.io/proxyCPU",
                     ("requests", "memory"): "sidecar.istio.io/proxyMemory",
                     ("limits", "cpu"): "sidecar.istio.io/proxyCPULimit",
                     ("limits", "memory"): "sidecar.istio.io/proxyMemoryLimit"}
    if not any(key in ctx.ann for key in by_annotation.values()):
        return copy.deepcopy(dict(ctx.values.resources))
    out: dict[str, Any] = {}
    for (group, resource), key in by_annotation.items():
        if key in ctx.ann:
            out.setdefault(group, {})[resource] = ctx.ann[key]
    return out


def _capture_container(ctx: _Ctx) -> dict[str, Any]:
    """istio-validation (CNI) or istio-init: what the template puts first in initContainers."""
    v, cni = ctx.values, ctx.values.cni_enabled
    container: dict[str, Any] = {"name": VALIDATION if cni else INIT}
    if ctx.embedded:
        container["command"] = list(VALIDATE_COMMAND)
    else:
        container["image"] = _image(ctx, v.proxy_init_image)
        excluded = _exclude_inbound(ctx.status_port, ctx.get(cp.ANNOTATION_EXCLUDE_INBOUND_PORTS,
                                                             v.exclude_inbound_ports))
        args = ["istio-iptables", "-p", str(ctx.mesh.proxy_listen_port), "-z", str(ctx.mesh.proxy_inbound_listen_port),
                "-u", "1337", "-m", ctx.mode,
                "-i", ctx.get(cp.ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES, v.include_ip_ranges),
                "-x", ctx.get(cp.ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES, v.exclude_ip_ranges),
                "-b", ctx.get(cp.ANNOTATION_INCLUDE_INBOUND_PORTS, v.include_inbound_ports),
                "-d", f"15090,15021,{excluded}" if excluded else "15090,15021"]
        for flag, key, default in (("-q", cp.ANNOTATION_INCLUDE_OUTBOUND_PORTS, v.include_outbound_ports),
                                   ("-o", cp.ANNOTATION_EXCLUDE_OUTBOUND_PORTS, v.exclude_outbound_ports)):
            if key in ctx.ann or default:
                args += [flag, ctx.get(key, default)]
        for key in (cp.ANNOTATION_REROUTE_VIRTUAL_INTERFACES, cp.ANNOTATION_KUBEVIRT_INTERFACES):
            if key in ctx.ann:
                args += ["-k", ctx.ann[key]]
                break
        if cp.ANNOTATION_EXCLUDE_INTERFACES in ctx.ann:
            args += ["-c", ctx.ann[cp.ANNOTATION_EXCLUDE_INTERFACES]]
        args.append(f"--log_output_level={ctx.get('sidecar.istio.io/agentLogLevel', v.logging_level)}")
        if cni:
            args += ["--run-validation", "--skip-rule-apply"]
        container["args"] = args
        if v.image_pull_policy:
            container["imagePullPolicy"] = v.image_pull_policy
    if ctx.mesh.proxy_metadata:
        container["env"] = [{"name": k, "value": ctx.mesh.proxy_metadata[k]} for k in sorted(ctx.mesh.proxy_metadata)]
    container["resources"] = _resources(ctx)
    uid = 0 if not cni else 1337
    container["securityContext"] = {
        "allowPrivilegeEscalation": v.privileged, "privileged": v.privileged,
        "capabilities": {"drop": ["ALL"]} if cni else {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        "readOnlyRootFilesystem": cni, "runAsGroup": uid, "runAsNonRoot": cni, "runAsUser": uid}
    return container


def _pod_ports(containers: list[dict[str, Any]]) -> str:
    """ISTIO_META_POD_PORTS as the template renders it (Go's JSON of each ContainerPort)."""
    items = [_go_json(_ordered(p, _PORT_ORDER)) for c in containers for p in c.get("ports") or []
             if isinstance(p, Mapping)]
    return "[" + "".join(f"\n    {',' if i else ''}{item}" for i, item in enumerate(items)) + "\n]"


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _resource_env(name: str, resource: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"resourceFieldRef": {"divisor": "1", "resource": resource}}}


def _proxy_env(ctx: _Ctx, containers: list[dict[str, Any]], apps: list[str]) -> list[dict[str, Any]]:
    v, owner = ctx.values, ctx.owner
    ca = v.ca_address or f"istiod{'-' + v.revision if v.revision else ''}.{v.istio_namespace}.svc:15012"
    env: list[dict[str, Any]] = [
        {"name": "PILOT_CERT_PROVIDER", "value": v.pilot_cert_provider}, {"name": "CA_ADDR", "value": ca},
        _field_env("POD_NAME", "metadata.name"), _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("INSTANCE_IP", "status.podIP"), _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        _field_env("HOST_IP", "status.hostIP"), _resource_env("ISTIO_CPU_LIMIT", "limits.cpu"),
        {"name": "PROXY_CONFIG", "value": _go_json(dict(ctx.mesh.proxy_config)) + "\n"},
        {"name": "ISTIO_META_POD_PORTS", "value": _pod_ports(containers)},
        {"name": "ISTIO_META_APP_CONTAINERS", "value": ",".join(apps)},
        _resource_env("GOMEMLIMIT", "limits.memory"),
        {"name": "ISTIO_META_CLUSTER_ID", "value": v.cluster_name or "Kubernetes"},
        _field_env("ISTIO_META_NODE_NAME", "spec.nodeName"),
        {"name": "ISTIO_META_INTERCEPTION_MODE", "value": ctx.mode},
    ]
    if owner.name:
        env.append({"name": "ISTIO_META_WORKLOAD_NAME", "value": owner.name})
        if owner.api_version:
            env.append({"name": "ISTIO_META_OWNER", "value": f"kubernetes://apis/{owner.api_version}/namespaces/"
                        f"{owner.namespace or 'default'}/{owner.kind.lower()}s/{owner.name}"})
    mesh_id = v.mesh_id or ctx.mesh.trust_domain
    if mesh_id:
        env.append({"name": "ISTIO_META_MESH_ID", "value": mesh_id})
    if ctx.mesh.trust_domain:
        env.append({"name": "TRUST_DOMAIN", "value": ctx.mesh.trust_domain})
    env += [{"name": k, "value": ctx.mesh.proxy_metadata[k]} for k in sorted(ctx.mesh.proxy_metadata)]
    return env


def _probe(period: int, timeout: int, failures: int, delay: int = 0) -> dict[str, Any]:
    probe: dict[str, Any] = {"httpGet": {"path": "/healthz/ready", "port": 15021}}
    if delay:
        probe["initialDelaySeconds"] = delay
    return {**probe, "periodSeconds": period, "timeoutSeconds": timeout, "failureThreshold": failures}


def _proxy_container(ctx: _Ctx, containers: list[dict[str, Any]], apps: list[str]) -> dict[str, Any]:
    v = ctx.values
    tproxy = ctx.mode == "TPROXY"
    container: dict[str, Any] = {"name": PROXY}
    if ctx.embedded:
        container["command"] = list(PROXY_AGENT_COMMAND)
    else:
        container["image"] = _image(ctx, v.proxy_image)
    if ctx.native:
        container["restartPolicy"] = "Always"
    container["ports"] = [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}]
    container["args"] = [
        "proxy", "sidecar", "--domain", f"$(POD_NAMESPACE).svc.{v.cluster_domain}",
        f"--proxyLogLevel={ctx.get('sidecar.istio.io/logLevel', v.log_level)}",
        f"--proxyComponentLogLevel={ctx.get('sidecar.istio.io/componentLogLevel', v.component_log_level)}",
        f"--log_output_level={ctx.get('sidecar.istio.io/agentLogLevel', v.logging_level)}"]
    hold = (v.hold_application_until_proxy_starts or ctx.mesh.hold_application_until_proxy_starts) and not ctx.native
    if not ctx.embedded and hold:
        container["lifecycle"] = {"postStart": {"exec": {"command": ["pilot-agent", "wait"]}}}
    elif not ctx.embedded and ctx.native:
        container["lifecycle"] = {"preStop": {"exec": {"command": [
            "pilot-agent", "request", f"--debug-port={ctx.status_port}", "POST", "drain"]}}}
    container["env"] = _proxy_env(ctx, containers, apps)
    if not ctx.embedded and v.image_pull_policy:
        container["imagePullPolicy"] = v.image_pull_policy
    if ctx.status_port != "0":
        number = {name: int(ctx.get(key, getattr(v, name))) for key, name in _INT_ANNOTATIONS.items()}
        container["readinessProbe"] = _probe(number["readiness_period_seconds"], 3,
                                             number["readiness_failure_threshold"],
                                             number["readiness_initial_delay_seconds"])
        if v.startup_probe:
            container["startupProbe"] = _probe(1, 3, v.startup_failure_threshold)
    container["resources"] = _resources(ctx)
    container["securityContext"] = {
        "allowPrivilegeEscalation": v.privileged,
        "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]} if tproxy else {"drop": ["ALL"]},
        "privileged": v.privileged, "readOnlyRootFilesystem": True, "runAsGroup": 1337,
        "runAsNonRoot": not tproxy, "runAsUser": 0 if tproxy else 1337}
    if not ctx.embedded:
        container["volumeMounts"] = [{"mountPath": path, "name": name} for name, path in _MOUNTS]
    return container


_MOUNTS: Final = (
    ("workload-socket", "/var/run/secrets/workload-spiffe-uds"),
    ("credential-socket", "/var/run/secrets/credential-uds"),
    ("workload-certs", "/var/run/secrets/workload-spiffe-credentials"),
    ("istiod-ca-cert", "/var/run/secrets/istio"), ("istio-ca-crl", "/var/run/secrets/istio/crl"),
    ("istio-data", "/var/lib/istio/data"), ("istio-envoy", "/etc/istio/proxy"),
    ("istio-token", "/var/run/secrets/tokens"), ("istio-podinfo", "/etc/istio/pod"),
)


def _volumes(ctx: _Ctx) -> list[dict[str, Any]]:
    if ctx.embedded:
        return []
    return [
        {"name": "workload-socket"}, {"name": "credential-socket"}, {"name": "workload-certs"},
        {"emptyDir": {"medium": "Memory"}, "name": "istio-envoy"}, {"emptyDir": {}, "name": "istio-data"},
        {"downwardAPI": {"items": [{"fieldRef": {"fieldPath": "metadata.labels"}, "path": "labels"},
                                   {"fieldRef": {"fieldPath": "metadata.annotations"}, "path": "annotations"}]},
         "name": "istio-podinfo"},
        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": ctx.values.token_audience, "expirationSeconds": 43200, "path": "istio-token"}}]}},
        {"configMap": {"name": "istio-ca-root-cert"}, "name": "istiod-ca-cert"},
        {"configMap": {"name": "istio-ca-crl", "optional": True}, "name": "istio-ca-crl"},
    ]


def _metadata(ctx: _Ctx, apps: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The template's labels and annotations."""
    v, lab, ann = ctx.values, ctx.labels, ctx.ann
    name = (lab.get("service.istio.io/canonical-name") or lab.get("app.kubernetes.io/name") or lab.get("app")
            or ctx.owner.name)[:63].removesuffix("-")
    labels = {"security.istio.io/tlsMode": lab.get("security.istio.io/tlsMode") or "istio",
              "service.istio.io/canonical-name": name,
              "service.istio.io/canonical-revision": lab.get("service.istio.io/canonical-revision")
              or lab.get("app.kubernetes.io/version") or lab.get("version") or "latest"}
    annotations = {REV: v.revision or "default"}
    for key in ("kubectl.kubernetes.io/default-logs-container", "kubectl.kubernetes.io/default-container"):
        if apps and key not in ann:
            annotations[key] = apps[0]
    if v.cni_enabled:
        annotations[cp.ANNOTATION_INTERCEPTION_MODE] = ctx.mode
        for key, default in ((cp.ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES, v.include_ip_ranges),
                             (cp.ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES, v.exclude_ip_ranges)):
            if ctx.get(key, default):
                annotations[key] = ctx.get(key, default)
        annotations[cp.ANNOTATION_INCLUDE_INBOUND_PORTS] = ctx.get(cp.ANNOTATION_INCLUDE_INBOUND_PORTS,
                                                                   v.include_inbound_ports)
        annotations[cp.ANNOTATION_EXCLUDE_INBOUND_PORTS] = _exclude_inbound(
            ctx.status_port, ctx.get(cp.ANNOTATION_EXCLUDE_INBOUND_PORTS, v.exclude_inbound_ports))
        for key, default in ((cp.ANNOTATION_INCLUDE_OUTBOUND_PORTS, v.include_outbound_ports),
                             (cp.ANNOTATION_EXCLUDE_OUTBOUND_PORTS, v.exclude_outbound_ports)):
            if key in ann or default:
                annotations[key] = ctx.get(key, default)
        for key in (cp.ANNOTATION_KUBEVIRT_INTERFACES, cp.ANNOTATION_REROUTE_VIRTUAL_INTERFACES,
                    cp.ANNOTATION_EXCLUDE_INTERFACES):
            if ann.get(key):
                annotations[key] = ann[key]
    return labels, annotations


# --- merging the template into the pod ------------------------------------------------------------

_MERGE_KEYS: Final = {"env": "name", "ports": "containerPort", "volumeMounts": "mountPath", "volumes": "name",
                      "initContainers": "name", "containers": "name"}


def _merge(base: Any, patch: Any, key: str = "") -> Any:
    """A strategic merge patch, enough for containers and pod specs: mappings merge, lists with a
    Kubernetes merge key (env by name, ports by containerPort ...) merge item by item, and
    everything else is replaced by the patch."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, value in patch.items():
            out[k] = _merge(base[k], value, k) if k in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in _MERGE_KEYS:
        merge_key = _MERGE_KEYS[key]
        merged = [copy.deepcopy(item) for item in base]
        where = {item.get(merge_key): n for n, item in enumerate(merged) if isinstance(item, dict)}
        for item in patch:
            n = where.get(item.get(merge_key)) if isinstance(item, dict) else None
            if n is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[n] = _merge(merged[n], item)
        return merged
    return copy.deepcopy(patch)


def _find(containers: list[Any], name: str) -> dict[str, Any] | None:
    return next((c for c in containers if isinstance(c, dict) and c.get("name") == name), None)


def _move(containers: list[dict[str, Any]], name: str, *, first: bool) -> list[dict[str, Any]]:
    match = _find(containers, name)
    if match is None:
        return containers
    rest = [c for c in containers if c is not match]
    return [match, *rest] if first else [*rest, match]


def _containers(spec: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = spec.get(key) or []
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise InjectError(f"spec.{key}: expected a list of containers")
    return [dict(c) for c in value]


def _inject(meta: dict[str, Any], spec: dict[str, Any], owner: _Owner, values: InjectValues,
            mesh: MeshInfo) -> tuple[dict[str, Any], dict[str, Any]]:
    ann, labels = _strings(meta, "annotations"), _strings(meta, "labels")
    mode, status_port = _validated(ann, values, mesh)
    if values.flavor == "embedded" and mode == "TPROXY":
        raise InjectError(f"{cp.ANNOTATION_INTERCEPTION_MODE}: TPROXY runs istio-proxy as root with NET_ADMIN; "
                          "the embedded runtime gives pods no privileges")
    native = ann.get("sidecar.istio.io/nativeSidecar", "true") != "false"
    ctx = _Ctx(values, mesh, ann, labels, owner, mode, status_port, native)
    init, main = _containers(spec, "initContainers"), _containers(spec, "containers")
    apps = [str(c.get("name")) for c in main if c.get("name") != PROXY]
    user_proxy = _find(main, PROXY) or _find(init, PROXY)

    # the template pod (what Istio renders), then merged over the pod
    template_init = [_capture_container(ctx)] if mode != "NONE" else []
    proxy = _proxy_container(ctx, main, apps)
    template_main = [] if native else [proxy]
    template_init += [proxy] if native else []
    volumes = _volumes(ctx)
    new_labels, new_annotations = _metadata(ctx, apps)
    if native and user_proxy is not None and user_proxy in main:  # Istio moves it to initContainers
        main.remove(user_proxy)
        init.append(user_proxy)
    init = _merge(init, template_init, "initContainers")
    main = _merge(main, template_main, "containers")

    # a container of the user's that the template also has (istio-proxy) wins over the template's
    original_main, original_init = _containers(spec, "containers"), _containers(spec, "initContainers")
    overrides: dict[str, list[dict[str, Any]]] = {}
    for group, template, targets in (("containers", template_main, main), ("initContainers", template_init, init)):
        for tc in template:
            user = _find(original_main, tc["name"])
            if user is None and group == "initContainers":
                user = _find(original_init, tc["name"])
            if user is None:
                continue
            overlay = copy.deepcopy(user)
            if overlay.get("image") == AUTO_IMAGE:
                del overlay["image"]
            overrides.setdefault(group, []).append(overlay)
            targets[[c.get("name") for c in targets].index(tc["name"])] = _merge(tc, overlay)
    if overrides:
        new_annotations[OVERRIDES] = _go_json({k: [_go_container(c) for c in overrides[k]]
                                               for k in ("containers", "initContainers") if k in overrides})
    sidecar = _find(init, PROXY) or _find(main, PROXY)
    if sidecar is None:
        raise AssertionError("the template always has istio-proxy")
    _adjust_user(init, sidecar, user_proxy, mode)

    out_meta = dict(meta)
    out_meta["labels"] = {**labels, **new_labels}
    out_meta["annotations"] = {**ann, **new_annotations}
    _cluster_envs(sidecar, values, labels)
    _prometheus_merge(out_meta["annotations"], sidecar, ann, values, mesh)
    network = labels.get(NETWORK_LABEL) or values.network
    if network:
        out_meta["labels"][NETWORK_LABEL] = network
    out_meta["annotations"][STATUS] = _go_json({
        "initContainers": [c["name"] for c in template_init] or None,
        "containers": [c["name"] for c in template_main] or None,
        "volumes": [v["name"] for v in volumes] or None, "imagePullSecrets": None,
        "revision": values.revision or "default"})

    out_spec = dict(spec)
    if native:
        for name in (PROXY, VALIDATION, INIT):
            init = _move(init, name, first=True)
    else:
        hold = values.hold_application_until_proxy_starts or mesh.hold_application_until_proxy_starts
        main = _move(main, PROXY, first=hold)
        init = _move(_move(init, VALIDATION, first=True), INIT, first=False)
    out_spec["initContainers"], out_spec["containers"] = init, main
    if volumes:
        out_spec["volumes"] = _merge(list(spec.get("volumes") or []), volumes, "volumes")
    return out_meta, out_spec


def _adjust_user(init: list[dict[str, Any]], sidecar: dict[str, Any], user: Mapping[str, Any] | None,
                 mode: str) -> None:
    """Istio's adjustInitContainerUser: a user's istio-proxy runAsUser/runAsGroup also apply to the
    validation container (and its ``-u``); in TPROXY the proxy keeps uid 0."""
    ctx = (user or {}).get("securityContext") or {}
    uid, gid = ctx.get("runAsUser"), ctx.get("runAsGroup")
    if uid is None and gid is None:
        return
    capture = _find(init, INIT) or _find(init, VALIDATION)
    if capture is None:
        return
    if mode == "TPROXY" and uid is not None:
        sidecar["securityContext"] = {**sidecar.get("securityContext", {}), "runAsUser": 0}
    if mode != "TPROXY" and capture["name"] == VALIDATION:
        security = dict(capture.get("securityContext") or {})
        security.update({k: v for k, v in (("runAsUser", uid), ("runAsGroup", gid)) if v is not None})
        capture["securityContext"] = security
    if uid and "-u" in capture.get("args", [])[:-1]:
        args = list(capture["args"])
        args[args.index("-u") + 1] = str(uid)
        capture["args"] = args


def _cluster_envs(sidecar: dict[str, Any], values: InjectValues, labels: Mapping[str, str]) -> None:
    """Istio's overwriteClusterInfo: the cluster id and network env, moved to the end, sorted."""
    extra = {}
    if values.cluster_name:
        extra["ISTIO_META_CLUSTER_ID"] = values.cluster_name
    network = labels.get(NETWORK_LABEL) or values.network
    if network:
        extra["ISTIO_META_NETWORK"] = network
    if extra:
        env = [e for e in sidecar.get("env", []) if e.get("name") not in extra]
        sidecar["env"] = env + [{"name": k, "value": extra[k]} for k in sorted(extra)]


_PROMETHEUS: Final = {"prometheus_io_scrape": "scrape", "prometheus_io_path": "path", "prometheus_io_port": "port"}


def _go_bool(text: str) -> bool | None:
    return {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
            "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}.get(text)


def _prometheus_merge(annotations: dict[str, str], sidecar: dict[str, Any], original: Mapping[str, str],
                      values: InjectValues, mesh: MeshInfo) -> None:
    """Istio's applyPrometheusMerge: Prometheus scrapes the agent (:15020), which merges the app's
    metrics, whose scrape settings it gets as ISTIO_PROMETHEUS_ANNOTATIONS."""
    keys = {k: _PROMETHEUS[name] for k in annotations if (name := re.sub(r"[^a-zA-Z0-9_]", "_", k)) in _PROMETHEUS}
    found = {what: annotations[k] for k, what in keys.items()}
    if "scrape" in found and _go_bool(found["scrape"]) is False:
        return
    merge = _go_bool(original.get("prometheus.istio.io/merge-metrics", ""))
    if not (mesh.enable_prometheus_merge if merge is None else merge):
        return
    target = str(values.status_port)
    if found.get("port") == target:
        return
    scrape = {k: found.get(k, "") for k in ("scrape", "path", "port")}
    if any(scrape.values()):
        sidecar["env"] = [*sidecar.get("env", []), {"name": "ISTIO_PROMETHEUS_ANNOTATIONS", "value": _go_json(scrape)}]
    for key in keys:
        del annotations[key]
    annotations.update({"prometheus.io/port": target, "prometheus.io/path": "/stats/prometheus",
                        "prometheus.io/scrape": "true"})


# --- Go's JSON ----------------------------------------------------------------------------------

_CONTAINER_ORDER: Final = (
    "name", "image", "command", "args", "workingDir", "ports", "envFrom", "env", "resources", "resizePolicy",
    "restartPolicy", "volumeMounts", "volumeDevices", "livenessProbe", "readinessProbe", "startupProbe",
    "lifecycle", "terminationMessagePath", "terminationMessagePolicy", "imagePullPolicy", "securityContext",
    "stdin", "stdinOnce", "tty")
_SECURITY_ORDER: Final = (
    "capabilities", "privileged", "seLinuxOptions", "windowsOptions", "runAsUser", "runAsGroup", "runAsNonRoot",
    "readOnlyRootFilesystem", "allowPrivilegeEscalation", "procMount", "seccompProfile", "appArmorProfile")
_PORT_ORDER: Final = ("name", "hostPort", "containerPort", "protocol", "hostIP")
_ENV_ORDER: Final = ("name", "value", "valueFrom")


def _ordered(doc: Mapping[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    """Keys in a Go struct's field order (unknown keys after, as given)."""
    def rank(key: str) -> int:
        return order.index(key) if key in order else len(order)

    return {k: doc[k] for k in sorted(doc, key=rank)}


def _go_container(container: Mapping[str, Any]) -> dict[str, Any]:
    """A container as Go's json.Marshal writes a corev1.Container (``resources`` always present)."""
    out = _ordered({"resources": {}, **container}, _CONTAINER_ORDER)
    if isinstance(out.get("securityContext"), Mapping):
        out["securityContext"] = _ordered(out["securityContext"], _SECURITY_ORDER)
    for key, order in (("ports", _PORT_ORDER), ("env", _ENV_ORDER)):
        if isinstance(out.get(key), list):
            out[key] = [_ordered(i, order) if isinstance(i, Mapping) else i for i in out[key]]
    return out


def _go_json(value: Any) -> str:
    """json.Marshal: compact, not ASCII-escaped, but with Go's HTML-safe escapes."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text
