"""``pod_to_dict``: a :class:`~weir.api.pod.Pod` back to a manifest, to store and to show.

The manifest the user gave is the record: ``Pod.raw`` is returned with the typed metadata laid
over it (the runtime fills ``uid``, a generated ``name``, the default namespace) and without
``status`` (the runtime keeps its own). A pod built by hand, or whose spec no longer matches
its ``raw``, is rendered from its typed fields alone, so what is stored always parses back to
the same pod.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from weir.api.errors import ManifestError
from weir.api.meta import ObjectMeta
from weir.api.pod_model import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    Container,
    ContainerPort,
    EnvVar,
    ExecAction,
    FieldRef,
    GRPCAction,
    HTTPGetAction,
    Pod,
    PodSecurityContext,
    PodSpec,
    Probe,
    SecurityContext,
)
from weir.api.pod_parse import parse_pod


def pod_to_dict(pod: Pod) -> dict[str, Any]:
    """A fresh, JSON/YAML-ready manifest for ``pod`` (``parse_pod`` of it equals ``pod``)."""
    raw = {k: copy.deepcopy(v) for k, v in pod.raw.items() if k != "status"}
    out: dict[str, Any] = {"apiVersion": pod.api_version, "kind": pod.kind}
    metadata = raw.get("metadata")
    out["metadata"] = _metadata(pod.metadata, metadata if isinstance(metadata, dict) else {})
    out["spec"] = raw["spec"] if _raw_spec_matches(pod) else _spec(pod.spec)
    return out


def _raw_spec_matches(pod: Pod) -> bool:
    if "spec" not in pod.raw:
        return False
    try:
        return parse_pod(pod.raw).spec == pod.spec
    except ManifestError:
        return False


def _metadata(meta: ObjectMeta, raw: dict[str, Any]) -> dict[str, Any]:
    out = dict(raw)
    for key in ("name", "generateName", "uid", "labels", "annotations"):
        out.pop(key, None)
    typed: dict[str, Any] = {
        "name": meta.name, "generateName": meta.generate_name, "namespace": meta.namespace,
        "uid": meta.uid, "labels": dict(meta.labels), "annotations": dict(meta.annotations),
    }
    out.update({k: v for k, v in typed.items() if v})
    return out


def _spec(spec: PodSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.init_containers:
        out["initContainers"] = [_container(c) for c in spec.init_containers]
    out["containers"] = [_container(c) for c in spec.containers]
    out["restartPolicy"] = spec.restart_policy
    out["terminationGracePeriodSeconds"] = spec.termination_grace_period_seconds
    out["serviceAccountName"] = spec.service_account_name
    security = _pod_security(spec.security_context)
    if security:
        out["securityContext"] = security
    return out


def _container(c: Container) -> dict[str, Any]:
    out: dict[str, Any] = {"name": c.name, "command": list(c.command)}
    if c.args:
        out["args"] = list(c.args)
    if c.image is not None:
        out["image"] = c.image
    if c.env:
        out["env"] = [_env(e) for e in c.env]
    if c.working_dir is not None:
        out["workingDir"] = c.working_dir
    if c.ports:
        out["ports"] = [_port(p) for p in c.ports]
    security = _security(c.security_context)
    if security:
        out["securityContext"] = security
    resources = {k: dict(v) for k, v in (("limits", c.resources.limits), ("requests", c.resources.requests)) if v}
    if resources:
        out["resources"] = resources
    if c.restart_policy is not None:
        out["restartPolicy"] = c.restart_policy
    if c.termination_message_path != DEFAULT_TERMINATION_MESSAGE_PATH:
        out["terminationMessagePath"] = c.termination_message_path
    if c.termination_message_policy != "File":
        out["terminationMessagePolicy"] = c.termination_message_policy
    for key, probe in (("startupProbe", c.startup_probe), ("readinessProbe", c.readiness_probe),
                       ("livenessProbe", c.liveness_probe)):
        if probe is not None:
            out[key] = _probe(probe)
    return out


def _probe(p: Probe) -> dict[str, Any]:
    handler = p.handler
    action: dict[str, Any]
    if isinstance(handler, ExecAction):
        key, action = "exec", {"command": list(handler.command)}
    elif isinstance(handler, GRPCAction):
        key, action = "grpc", {"port": handler.port, **({"service": handler.service} if handler.service else {})}
    else:
        key, action = ("httpGet" if isinstance(handler, HTTPGetAction) else "tcpSocket"), {"port": handler.port}
        if handler.host:
            action["host"] = handler.host
        if isinstance(handler, HTTPGetAction):
            action.update(path=handler.path, scheme=handler.scheme)
            if handler.http_headers:
                action["httpHeaders"] = [{"name": h.name, "value": h.value} for h in handler.http_headers]
    out: dict[str, Any] = {key: action, "initialDelaySeconds": p.initial_delay_seconds,
                           "periodSeconds": p.period_seconds, "timeoutSeconds": p.timeout_seconds,
                           "successThreshold": p.success_threshold, "failureThreshold": p.failure_threshold}
    if p.termination_grace_period_seconds is not None:
        out["terminationGracePeriodSeconds"] = p.termination_grace_period_seconds
    return out


def _env(e: EnvVar) -> dict[str, Any]:
    out: dict[str, Any] = {"name": e.name}
    if e.value:
        out["value"] = e.value
    if isinstance(e.value_from, FieldRef):
        out["valueFrom"] = {"fieldRef": {"fieldPath": e.value_from.field_path}}
    elif e.value_from is not None:
        ref: dict[str, Any] = {"resource": e.value_from.resource, "divisor": e.value_from.divisor}
        if e.value_from.container_name:
            ref["containerName"] = e.value_from.container_name
        out["valueFrom"] = {"resourceFieldRef": ref}
    return out


def _port(p: ContainerPort) -> dict[str, Any]:
    out: dict[str, Any] = {"containerPort": p.container_port, "protocol": p.protocol}
    if p.name:
        out["name"] = p.name
    if p.host_port is not None:
        out["hostPort"] = p.host_port
    if p.host_ip is not None:
        out["hostIP"] = str(p.host_ip)
    return out


def _security(s: SecurityContext) -> dict[str, Any]:
    out: dict[str, Any] = {
        "runAsUser": s.run_as_user, "runAsGroup": s.run_as_group, "runAsNonRoot": s.run_as_non_root,
        "privileged": s.privileged, "readOnlyRootFilesystem": s.read_only_root_filesystem,
        "allowPrivilegeEscalation": s.allow_privilege_escalation,
    }
    caps = {k: list(v) for k, v in dataclasses.asdict(s.capabilities).items() if v}
    if caps:
        out["capabilities"] = caps
    return {k: v for k, v in out.items() if v is not None}


def _pod_security(s: PodSecurityContext) -> dict[str, Any]:
    out: dict[str, Any] = {
        "runAsUser": s.run_as_user, "runAsGroup": s.run_as_group, "runAsNonRoot": s.run_as_non_root,
        "fsGroup": s.fs_group,
    }
    if s.supplemental_groups:
        out["supplementalGroups"] = list(s.supplemental_groups)
    if s.sysctls:
        out["sysctls"] = [{"name": x.name, "value": x.value} for x in s.sysctls]
    return {k: v for k, v in out.items() if v is not None}
