"""A container's environment as kubelet builds it: literal values, and ``valueFrom`` resolved
from the pod (``fieldRef``) and the container's resources (``resourceFieldRef``), with
Kubernetes' ``$(VAR)`` references expanded in values (earlier variables only) and in the
command and arguments (:func:`expand`). Pure."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

from weir.api.pod import Container, FieldRef, Pod, ResourceFieldRef

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
           "Ti": 2**40}


def _quantity(text: str) -> float:
    m = _QUANTITY.match(text.strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a resource quantity: {text!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def _field(pod: Pod, status: Mapping[str, Any], path: str, node_ip: str) -> str:
    meta = pod.metadata
    simple = {"metadata.name": meta.name, "metadata.namespace": meta.namespace, "metadata.uid": meta.uid,
              "spec.nodeName": os.uname().nodename, "spec.serviceAccountName": pod.spec.service_account_name,
              "status.hostIP": node_ip, "status.hostIPs": node_ip,
              "status.podIP": str(status.get("podIP", "")),
              "status.podIPs": ",".join(str(p.get("ip", "")) for p in status.get("podIPs", []))}
    if path in simple:
        return simple[path]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        source = meta.labels if m.group(1) == "labels" else meta.annotations
        return str(source.get(m.group(2), ""))
    return ""


def _resource(pod: Pod, container: Container, ref: ResourceFieldRef) -> str:
    target = pod.container(ref.container_name) if ref.container_name else container
    target = target or container
    kind, _, name = ref.resource.partition(".")
    values = target.resources.limits if kind == "limits" else target.resources.requests
    raw = values.get(name)
    if raw is None:
        # kubelet falls back to the node's allocatable for an unset limit: the whole machine here
        if name == "cpu":
            raw = str(os.cpu_count() or 1)
        elif name == "memory":
            raw = str(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        else:
            return "0"
    value = _quantity(str(raw)) / _quantity(ref.divisor or "1")
    return str(math.ceil(value))


_REFERENCE = re.compile(r"\$(\$|\(([^)]*)\))")
"""``$$``, or ``$(`` up to the first ``)``: the name is everything between, as kubelet reads it (a
``$(`` inside a name or ``$$`` there is part of the name, so ``$(A$(B))`` stays as written)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' variable expansion: ``$(NAME)`` becomes its value when ``NAME`` is defined and stays
    as written when it is not; ``$$`` is an escaped ``$`` (``$$(NAME)`` -> ``$(NAME)``)."""
    def one(m: re.Match[str]) -> str:
        if m.group(1) == "$":
            return "$"
        return env.get(m.group(2), m.group(0))
    return _REFERENCE.sub(one, text)


def container_env(pod: Pod, container: Container, status: Mapping[str, Any], node_ip: str = "",
                  tools_dir: str = "", pod_dir: str = "") -> dict[str, str]:
    """``tools_dir`` (the node's ``weir`` launcher) comes first on PATH, as an image's tools would.
    ``pod_dir`` (the runtime's directory for this pod: its token, trust bundle and scratch space,
    what volumes are in Kubernetes) is given as ``WEIR_POD_DIR``."""
    env = {"PATH": f"{tools_dir}:{DEFAULT_PATH}" if tools_dir else DEFAULT_PATH, "HOSTNAME": pod.metadata.name}
    if pod_dir:
        env["WEIR_POD_DIR"] = pod_dir
    for var in container.env:
        source = var.value_from
        if isinstance(source, FieldRef):
            env[var.name] = _field(pod, status, source.field_path, node_ip)
        elif isinstance(source, ResourceFieldRef):
            env[var.name] = _resource(pod, container, source)
        else:
            env[var.name] = expand(var.value, env)
    return env


def container_argv(container: Container, env: Mapping[str, str]) -> list[str]:
    """The command and arguments with ``$(VAR)`` expanded from the container's environment."""
    return [expand(part, env) for part in (*container.command, *container.args)]
