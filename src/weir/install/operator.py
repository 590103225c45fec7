"""An IstioOperator document (``install.istio.io/v1alpha1``), parsed once into an :class:`InstallSpec`
whose ``values`` are the weir-cni chart's.

Accepted, with Istio's names: ``spec.components.cni.{enabled,namespace,k8s.*}``,
``spec.values.cni.*`` (the chart's values, e.g. ``cniBinDir``, ``chained``, ``excludeNamespaces``,
``repair.*``, ``logging.level``), ``spec.values.global.{hub,tag,nativeNftables,logging.level,...}``,
``spec.hub``/``spec.tag``/``spec.namespace`` and ``spec.values.pilot.cni.enabled`` (recorded for the
sidecar injector, a later stage). An unknown field, a value of the wrong type, or an Istio field
weir does not implement is a :class:`SpecError` that names the field's path; nothing is rendered.

weir's decisions where Istio differs: ``components.cni.enabled`` defaults to **true** (weir
captures traffic only through its CNI plugin, so there is no install without it); the namespace
is ``components.cni.namespace``, else ``spec.namespace``, else ``values.global.istioNamespace``,
else ``istio-system``. ``values.cni.enabled`` (Istio's older switch) is read as
``components.cni.enabled`` and must agree with it when both are given.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

API_VERSION = "install.istio.io/v1alpha1"
KIND = "IstioOperator"
DEFAULT_NAMESPACE = "istio-system"


class SpecError(ValueError):
    """A field of the IstioOperator (or a ``--set``) is wrong; ``str()`` is one line naming it."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True)
class InstallSpec:
    """What to install. ``values`` are the weir-cni chart's (only what the document set; the
    chart's defaults fill the rest)."""

    cni_enabled: bool
    namespace: str
    values: Mapping[str, Any]
    pilot_cni_enabled: bool | None = None

    def comments(self) -> list[str]:
        """Comment lines (without ``#``) that go in front of the rendered manifests."""
        lines = []
        if self.pilot_cni_enabled is not None:
            lines.append(f"values.pilot.cni.enabled={str(self.pilot_cni_enabled).lower()}: recorded for the "
                         "sidecar injector (a later stage of weir); nothing below depends on it")
        if not self.cni_enabled:
            lines.append("components.cni.enabled is false: nothing to install")
        return lines


# ---- field checks -------------------------------------------------------------------------------

Check = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Unsupported:
    """An Istio field weir knows but does not implement: naming it is an error with this reason."""

    why: str


Schema = Mapping[str, "Schema | Check | Unsupported"]

_KINDS = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
          dict: "a mapping", type(None): "null"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _show(value: Any) -> str:
    kind = _KINDS.get(type(value), type(value).__name__)
    if isinstance(value, (list, dict)):
        return kind
    return f"{value!r} ({kind})" if not isinstance(value, bool) else str(value).lower()


def _bool(path: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise SpecError(path, f"expected true or false, got {_show(value)}")


def _str(path: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    raise SpecError(path, f"expected a string, got {_show(value)}")


def _nonempty(path: str, value: Any) -> str:
    if not _str(path, value):
        raise SpecError(path, "must not be empty")
    return str(value)


def _tag(path: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _str(path, value)


def _int(path: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise SpecError(path, f"expected a whole number of 0 or more, got {_show(value)}")


def _abs_path(path: str, value: Any) -> str:
    if not _str(path, value).startswith("/"):
        raise SpecError(path, f"expected an absolute path, got {value!r}")
    return str(value)


def _file_name(path: str, value: Any) -> str:
    if "/" in _str(path, value):
        raise SpecError(path, f"expected a file name without '/', got {value!r}")
    return str(value)


def _namespace(path: str, value: Any) -> str:
    if not _DNS_LABEL.match(_str(path, value)):
        raise SpecError(path, f"expected a namespace name (a DNS-1123 label), got {value!r}")
    return str(value)


def _str_list(path: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise SpecError(path, f"expected a list of strings, got {_show(value)}")
    return [_nonempty(f"{path}[{i}]", item) for i, item in enumerate(value)]


def _mapping(path: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(path, f"expected a mapping, got {_show(value)}")
    for key in value:
        _str(f"{path}.{key}", key)
    return copy.deepcopy(value)


def _mapping_list(path: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise SpecError(path, f"expected a list of mappings, got {_show(value)}")
    return [_mapping(f"{path}[{i}]", item) for i, item in enumerate(value)]


def _str_map(path: str, value: Any) -> dict[str, str]:
    return {key: _str(f"{path}.{key}", item) for key, item in _mapping(path, value).items()}


def _scalar_map(path: str, value: Any) -> dict[str, str | int | float | bool]:
    out = _mapping(path, value)
    for key, item in out.items():
        if not isinstance(item, (str, int, float, bool)):
            raise SpecError(f"{path}.{key}", f"expected a string, number or true/false, got {_show(item)}")
    return out


def _one_of(*allowed: str) -> Check:
    def check(path: str, value: Any) -> str:
        if _str(path, value) not in allowed:
            raise SpecError(path, f"expected one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
        return str(value)

    return check


# ---- the accepted document ---------------------------------------------------------------------

_LATER = Unsupported("not supported by weir install yet: it renders only components.cni "
                     "(the control plane is a later stage)")
_NOT_IN_CHART = Unsupported("an Istio setting the weir-cni chart does not have")
_PULL_POLICY = _one_of("", "Always", "IfNotPresent", "Never")
_LOG_LEVEL = _one_of("", "debug", "info", "warn", "warning", "error")  # what the agent accepts

CNI_VALUES: Schema = {
    "enabled": _bool,  # Istio's older switch, read as components.cni.enabled
    "hub": _str, "tag": _tag, "image": _nonempty, "pullPolicy": _PULL_POLICY,
    "logging": {"level": _LOG_LEVEL},
    "cniBinDir": _abs_path, "cniConfDir": _abs_path, "cniConfFileName": _file_name, "cniNetnsDir": _abs_path,
    "chained": _bool, "istioOwnedCNIConfig": _bool, "istioOwnedCNIConfigFileName": _file_name,
    "cniConfDropIn": _bool, "nativeNftables": _bool,
    "excludeNamespaces": _str_list,
    "repair": {
        "enabled": _bool, "repairPods": _bool, "deletePods": _bool, "labelPods": _bool,
        "brokenPodLabelKey": _nonempty, "brokenPodLabelValue": _str, "initContainerName": _nonempty,
        "hub": _NOT_IN_CHART, "tag": _NOT_IN_CHART,
    },
    "resources": _mapping, "tolerations": _mapping_list, "affinity": _mapping, "podAnnotations": _str_map,
    "updateStrategy": _mapping, "terminationGracePeriodSeconds": _int, "env": _scalar_map,
    "provider": _one_of("default"),
    "ambient": Unsupported("Istio's ambient mode is not part of weir (weir captures for sidecars)"),
    "variant": _NOT_IN_CHART, "seccompProfile": _NOT_IN_CHART, "seLinuxOptions": _NOT_IN_CHART,
    "resourceQuotas": _NOT_IN_CHART, "revision": _NOT_IN_CHART, "daemonSetLabels": _NOT_IN_CHART,
    "podLabels": _NOT_IN_CHART, "privileged": _NOT_IN_CHART, "psp_cluster_role": _NOT_IN_CHART,
    "platform": _NOT_IN_CHART, "istioOwnedCNIConfigFilename": _NOT_IN_CHART,
}

GLOBAL_VALUES: Schema = {
    "hub": _str, "tag": _tag, "imagePullPolicy": _PULL_POLICY, "imagePullSecrets": _str_list,
    "logging": {"level": _LOG_LEVEL}, "nativeNftables": _bool, "istioNamespace": _namespace,
    "*": _LATER,
}

_COMPONENT_K8S: Schema = {
    "resources": _mapping, "tolerations": _mapping_list, "affinity": _mapping, "podAnnotations": _str_map,
    "*": Unsupported("only resources, tolerations, affinity and podAnnotations are supported here; "
                     "see spec.values.cni for the rest"),
}

SPEC: Schema = {
    "profile": _one_of("default"),
    "hub": _str, "tag": _tag, "namespace": _namespace,
    "revision": _LATER, "meshConfig": _LATER, "installPackagePath": _LATER, "compatibilityVersion": _LATER,
    "components": {
        "cni": {"enabled": _bool, "namespace": _namespace, "hub": _str, "tag": _tag, "k8s": _COMPONENT_K8S},
        "base": _LATER, "pilot": _LATER, "ingressGateways": _LATER, "egressGateways": _LATER,
        "istiodRemote": _LATER, "ztunnel": _LATER,
    },
    "values": {
        "cni": CNI_VALUES,
        "pilot": {"cni": {"enabled": _bool, "provider": _one_of("default")}, "*": _LATER},
        "global": GLOBAL_VALUES,
        "base": _LATER, "gateways": _LATER, "istiodRemote": _LATER, "meshConfig": _LATER, "revisionTags": _LATER,
        "sidecarInjectorWebhook": _LATER, "telemetry": _LATER, "ztunnel": _LATER, "defaultRevision": _LATER,
        "profile": _LATER, "experimental": _LATER, "ownerName": _LATER,
    },
}

DOCUMENT: Schema = {
    "apiVersion": _str, "kind": _str,
    "metadata": {"name": _str, "namespace": _str, "labels": _str_map, "annotations": _str_map},
    "spec": SPEC,
}


def _walk(schema: Schema, value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(path or "(document)", f"expected a mapping, got {_show(value)}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        child = f"{path}.{key}" if path else str(key)
        if not isinstance(key, str):
            raise SpecError(child, "field names must be strings")
        rule = schema.get(key) if key != "*" else None
        if rule is None:
            known = [k for k in schema if k != "*" and not isinstance(schema[k], Unsupported)]
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
            if close:
                raise SpecError(child, f"unknown field (did you mean {close[0]}?)")
            rule = schema.get("*")
            if rule is None:
                raise SpecError(child, "unknown field" + (f" (known here: {', '.join(known)})" if len(known) <= 8
                                                          else ""))
        if isinstance(rule, Unsupported):
            raise SpecError(child, rule.why)
        if item is None:  # YAML "key:" with no value: unset, as Istio reads it
            continue
        out[key] = _walk(rule, item, child) if isinstance(rule, Mapping) else rule(child, item)
    return out


# ---- the document -> InstallSpec -----------------------------------------------------------------


def parse(document: Any) -> InstallSpec:
    """Check every field of an IstioOperator document and translate it to the chart's values."""
    doc = _walk(DOCUMENT, document, "")
    if doc.get("apiVersion") != API_VERSION:
        raise SpecError("apiVersion", f"expected {API_VERSION}, got {document.get('apiVersion')!r}")
    if doc.get("kind") != KIND:
        raise SpecError("kind", f"expected {KIND}, got {document.get('kind')!r}")
    spec = doc.get("spec", {})
    values = spec.get("values", {})
    component = spec.get("components", {}).get("cni", {})

    chart: dict[str, Any] = copy.deepcopy(values.get("cni", {}))
    legacy = chart.pop("enabled", None)
    chart.pop("provider", None)  # only "default" is accepted, and that is what the chart does
    if chart.get("cniConfDropIn") and chart.get("chained") is False:
        raise SpecError("spec.values.cni.cniConfDropIn", "needs chained: true (a drop-in extends the primary "
                        "conflist)")
    enabled = component.get("enabled")
    if enabled is not None and legacy is not None and enabled != legacy:
        raise SpecError("spec.components.cni.enabled", f"is {str(enabled).lower()} but spec.values.cni.enabled "
                        f"is {str(legacy).lower()}; set one of them")

    global_values: dict[str, Any] = copy.deepcopy(values.get("global", {}))
    istio_namespace = global_values.pop("istioNamespace", None)
    namespace = component.get("namespace") or spec.get("namespace") or istio_namespace or DEFAULT_NAMESPACE
    for key in ("hub", "tag"):  # spec.hub/tag override values.global, as in Istio
        if key in spec:
            global_values[key] = spec[key]
        if key in component:  # the component's own image coordinates override values.cni's
            chart[key] = component[key]
    chart.update(component.get("k8s", {}))
    if global_values:
        chart["global"] = global_values
    if enabled is None:
        enabled = legacy if legacy is not None else True
    pilot_cni = values.get("pilot", {}).get("cni", {}).get("enabled")
    return InstallSpec(cni_enabled=enabled, namespace=namespace, values=chart, pilot_cni_enabled=pilot_cni)


# ---- --set -------------------------------------------------------------------------------------

_INT = re.compile(r"^-?[0-9]+$")


def parse_set_value(text: str) -> Any:
    """istioctl's ``--set`` values: true/false, whole numbers, ``null``, a YAML flow list or map
    (``[a,b]``, ``{cpu: 100m}``), else the text as a string."""
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    if _INT.match(text):
        return int(text)
    if text.startswith(("[", "{")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {text}", f"not a YAML list or map: {str(exc).splitlines()[0]}") from None
    return text


def apply_sets(document: Any, sets: Sequence[str]) -> Any:
    """A copy of ``document`` with each ``PATH=VALUE`` set under ``spec`` (``values.cni.chained=false``,
    ``components.cni.namespace=weir-system``; a leading ``spec.`` is accepted)."""
    doc = copy.deepcopy(document)
    for item in sets:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if parts[:1] == ["spec"]:
            parts = parts[1:]
        if not sep or not parts or not all(parts):
            raise SpecError(f"--set {item}", "expected PATH=VALUE, e.g. values.cni.chained=false")
        if not isinstance(doc, dict):
            raise SpecError("(document)", f"expected a mapping, got {_show(doc)}")
        node = doc.setdefault("spec", {})
        path = "spec"
        for part in parts[:-1]:
            if not isinstance(node, dict):
                raise SpecError(path, f"cannot set {key}: {path} is {_show(node)}, not a mapping")
            node = node.setdefault(part, {})
            path = f"{path}.{part}"
        if not isinstance(node, dict):
            raise SpecError(path, f"cannot set {key}: {path} is {_show(node)}, not a mapping")
        node[parts[-1]] = parse_set_value(text)
    return doc


def empty_document() -> dict[str, Any]:
    """The document ``weir install`` starts from when no ``-f`` is given."""
    return {"apiVersion": API_VERSION, "kind": KIND, "spec": {}}
