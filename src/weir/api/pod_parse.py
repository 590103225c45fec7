"""``parse_pod``: a decoded Pod manifest (``dict``) -> :class:`~weir.api.pod.Pod`, or every problem.

Two passes over the document: :mod:`weir.api.kube_schema` checks field names and JSON types
against Kubernetes' own tables, then the builders here check meaning (names, ranges, what the
embedded runtime can run) and build the dataclasses. The builders read only what the first
pass accepted, so a bad value is reported once. Nothing here decodes YAML: callers pass dicts.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Mapping
from types import MappingProxyType

from weir.api import kube_schema as ks
from weir.api import names
from weir.api.errors import Problems, field_path, item_path, quoted, show
from weir.api.meta import Header, check_header, parse_metadata
from weir.api.pod_model import (
    BYTE_RESOURCES,
    CPU_RESOURCES,
    DEFAULT_SERVICE_ACCOUNT,
    DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS,
    DEFAULT_TERMINATION_MESSAGE_PATH,
    ENV_FIELD_PATHS,
    MAX_ID,
    Capabilities,
    Container,
    ContainerPort,
    EnvVar,
    EnvVarSource,
    FieldRef,
    Pod,
    PodSecurityContext,
    PodSpec,
    Protocol,
    ResourceFieldRef,
    ResourceRequirements,
    RestartPolicy,
    SecurityContext,
    Sysctl,
    TerminationMessagePolicy,
)
from weir.api.probe_parse import container_probes
from weir.api.read import Doc
from weir.api.read import absent as _absent
from weir.api.read import boolean as _bool
from weir.api.read import integer as _int
from weir.api.read import invalid as _invalid
from weir.api.read import mapping as _obj
from weir.api.read import mappings as _objs
from weir.api.read import present as _present
from weir.api.read import string as _str
from weir.api.read import strings as _strs

POD = Header("Pod", ("v1",), ks.POD, note=" (the embedded runtime runs core v1 Pods)")

NO_ENTRYPOINT = "required (the embedded runtime has no image to take an entrypoint from)"
HOST_NETWORK = "hostNetwork pods are not supported by the embedded runtime"

_RESTART_POLICIES: dict[str, RestartPolicy] = {"Always": "Always", "OnFailure": "OnFailure", "Never": "Never"}
_PROTOCOLS: dict[str, Protocol] = {"TCP": "TCP", "UDP": "UDP", "SCTP": "SCTP"}
_MESSAGE_POLICIES: dict[str, TerminationMessagePolicy] = {
    "File": "File", "FallbackToLogsOnError": "FallbackToLogsOnError",
}
_SUPPORTED_SOURCES = ("fieldRef", "resourceFieldRef")
_UNSUPPORTED_SOURCES = ("configMapKeyRef", "secretKeyRef", "fileKeyRef")
_KEYED_FIELD_PATH = re.compile(r"metadata\.(labels|annotations)\['(.*)'\]")
_CPU_DIVISORS = ("1m", "1")
_BYTE_DIVISORS = ("1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei")


def parse_pod(doc: object, source: str = "<pod>") -> Pod:
    """Check and build a Pod. Raises :class:`~weir.api.errors.ManifestError` listing every problem.

    ``doc`` is the decoded manifest (``yaml.safe_load`` / ``json.loads`` output); ``source``
    names it in messages (a file name). The returned pod keeps a deep copy of ``doc`` as ``raw``.
    """
    problems = Problems(source)
    if not isinstance(doc, dict):
        problems.fail("", f"expected a Pod manifest (a mapping), got {show(doc)}")
    check_header(doc, POD, problems)
    problems.raise_if_any()  # a Deployment or a v2 object would only add noise below
    ks.check_object(doc, ks.POD, "", problems)
    metadata = parse_metadata(doc, problems, POD, generate_name=True)
    spec = _pod_spec(doc, problems)
    problems.raise_if_any()
    pod = Pod(metadata=metadata, spec=spec, raw=copy.deepcopy(doc))
    _check_non_root(pod, problems)
    problems.raise_if_any()
    return pod


# --- reading values the schema pass accepted ----------------------------------------------


def _quantity_map(doc: Doc, key: str) -> Mapping[str, str]:
    value = doc.get(key)
    if not isinstance(value, dict):
        return MappingProxyType({})
    quantities = {k: _quantity(v) for k, v in value.items() if isinstance(k, str)}
    return MappingProxyType({k: v for k, v in quantities.items() if v})


def _quantity(value: object) -> str:
    if isinstance(value, bool):
        return ""
    if isinstance(value, int | float):
        return str(value)
    return value if isinstance(value, str) else ""


def _id(doc: Doc, key: str, path: str, problems: Problems) -> int | None:
    value = _int(doc, key)
    if value is not None and not 0 <= value <= MAX_ID:
        problems.add(field_path(path, key), f"must be between 0 and {MAX_ID}, inclusive, got {value}")
        return None
    return value


# --- the object ----------------------------------------------------------------------------


def _pod_spec(doc: Doc, problems: Problems) -> PodSpec:
    path = "spec"
    if not _present(doc, path):
        problems.missing(path, "required (a Pod needs spec.containers)")
    spec = _obj(doc, path)
    if spec.get("hostNetwork") is True:
        problems.add("spec.hostNetwork", HOST_NETWORK)
    grace = _int(spec, "terminationGracePeriodSeconds")
    if grace is not None and grace < 0:
        problems.add("spec.terminationGracePeriodSeconds", f"must be greater than or equal to 0, got {grace}")
        grace = None
    init = tuple(_container(c, cpath, problems, init=True) for cpath, c in _objs(spec, "initContainers", path))
    main = tuple(_container(c, cpath, problems, init=False) for cpath, c in _objs(spec, "containers", path))
    if _absent(spec, "containers") and isinstance(doc.get(path), dict):
        problems.missing("spec.containers", "required (at least one container)")
    _check_unique_names(spec, problems)
    return PodSpec(
        containers=main,
        init_containers=init,
        restart_policy=_RESTART_POLICIES.get(_str(spec, "restartPolicy"), "Always"),
        termination_grace_period_seconds=DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS if grace is None else grace,
        security_context=_pod_security_context(_obj(spec, "securityContext"), "spec.securityContext", problems),
        service_account_name=(_str(spec, "serviceAccountName") or _str(spec, "serviceAccount")
                              or DEFAULT_SERVICE_ACCOUNT),
    )


def _check_unique_names(spec: Doc, problems: Problems) -> None:
    seen: set[str] = set()
    for key in ("initContainers", "containers"):
        for cpath, container in _objs(spec, key, "spec"):
            name = _str(container, "name")
            if name and name in seen:
                problems.add(f"{cpath}.name", f"duplicate container name {quoted(name)}")
            seen.add(name)


def _pod_security_context(ctx: Doc, path: str, problems: Problems) -> PodSecurityContext:
    groups = ctx.get("supplementalGroups")
    supplemental: list[int] = []
    for index, group in enumerate(groups if isinstance(groups, list) else []):
        if isinstance(group, int) and not isinstance(group, bool):
            if 0 <= group <= MAX_ID:
                supplemental.append(group)
            else:
                problems.add(item_path(f"{path}.supplementalGroups", index),
                             f"must be between 0 and {MAX_ID}, inclusive, got {group}")
    return PodSecurityContext(
        run_as_user=_id(ctx, "runAsUser", path, problems),
        run_as_group=_id(ctx, "runAsGroup", path, problems),
        run_as_non_root=_bool(ctx, "runAsNonRoot"),
        fs_group=_id(ctx, "fsGroup", path, problems),
        supplemental_groups=tuple(supplemental),
        sysctls=tuple(Sysctl(_str(s, "name"), _str(s, "value")) for _, s in _objs(ctx, "sysctls", path)),
    )


# --- containers ----------------------------------------------------------------------------


def _container(doc: Doc, path: str, problems: Problems, *, init: bool) -> Container:
    name = _str(doc, "name")
    if name:
        problem = names.dns1123_label(name)
        if problem:
            _invalid(problems, f"{path}.name", name, problem)
    elif _absent(doc, "name"):
        problems.missing(f"{path}.name")
    command = _strs(doc, "command")
    if _absent(doc, "command"):
        problems.missing(f"{path}.command", NO_ENTRYPOINT)
    elif command and not command[0]:
        problems.add(f"{path}.command[0]", "must not be empty (it names the program to run)")
    working_dir = doc.get("workingDir")
    if isinstance(working_dir, str) and working_dir and not working_dir.startswith("/"):
        _invalid(problems, f"{path}.workingDir", working_dir,
                 "must be an absolute path (there is no image working directory to resolve it against)")
    env_from = doc.get("envFrom")
    if isinstance(env_from, list) and env_from:
        problems.add(f"{path}.envFrom", "envFrom is not supported by the embedded runtime (it has no "
                                        "ConfigMaps or Secrets)")
    restart = _str(doc, "restartPolicy")
    if restart and not init:
        problems.add(f"{path}.restartPolicy", 'only init containers may set restartPolicy ("Always" makes a '
                                              "native sidecar)")
    image = doc.get("image")
    ports = _ports(doc, path, problems)
    probes = container_probes(doc, path, problems, init=init, sidecar=init and restart == "Always", ports=ports)
    return Container(
        name=name,
        command=command,
        args=_strs(doc, "args"),
        image=image if isinstance(image, str) else None,
        env=tuple(_env(e, epath, problems) for epath, e in _objs(doc, "env", path)),
        working_dir=working_dir if isinstance(working_dir, str) and working_dir else None,
        ports=ports,
        security_context=_security_context(_obj(doc, "securityContext"), f"{path}.securityContext", problems),
        resources=ResourceRequirements(limits=_quantity_map(_obj(doc, "resources"), "limits"),
                                       requests=_quantity_map(_obj(doc, "resources"), "requests")),
        restart_policy="Always" if init and restart == "Always" else None,
        termination_message_path=_str(doc, "terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH,
        termination_message_policy=_MESSAGE_POLICIES.get(_str(doc, "terminationMessagePolicy"), "File"),
        startup_probe=probes["startup"],
        readiness_probe=probes["readiness"],
        liveness_probe=probes["liveness"],
    )


def _security_context(ctx: Doc, path: str, problems: Problems) -> SecurityContext:
    caps = _obj(ctx, "capabilities")
    return SecurityContext(
        run_as_user=_id(ctx, "runAsUser", path, problems),
        run_as_group=_id(ctx, "runAsGroup", path, problems),
        run_as_non_root=_bool(ctx, "runAsNonRoot"),
        capabilities=Capabilities(add=_strs(caps, "add"), drop=_strs(caps, "drop")),
        privileged=_bool(ctx, "privileged"),
        read_only_root_filesystem=_bool(ctx, "readOnlyRootFilesystem"),
        allow_privilege_escalation=_bool(ctx, "allowPrivilegeEscalation"),
    )


def _ports(doc: Doc, path: str, problems: Problems) -> tuple[ContainerPort, ...]:
    ports: list[ContainerPort] = []
    seen: set[str] = set()
    for ppath, port in _objs(doc, "ports", path):
        number = _int(port, "containerPort")
        if number is None:
            if _absent(port, "containerPort"):
                problems.missing(f"{ppath}.containerPort")
            continue
        if not 1 <= number <= 65535:
            problems.add(f"{ppath}.containerPort", f"must be between 1 and 65535, inclusive, got {number}")
            continue
        host_port = _int(port, "hostPort") or None  # 0 is unset, as in Kubernetes
        if host_port is not None and not 1 <= host_port <= 65535:
            problems.add(f"{ppath}.hostPort", f"must be between 1 and 65535, inclusive, got {host_port}")
            host_port = None
        name = _str(port, "name")
        if name:
            problem = names.port_name(name)
            if problem:
                _invalid(problems, f"{ppath}.name", name, problem)
            elif name in seen:
                problems.add(f"{ppath}.name", f"duplicate port name {quoted(name)}")
            seen.add(name)
        host_ip = None
        raw_ip = _str(port, "hostIP")
        if raw_ip:
            try:
                host_ip = ipaddress.ip_address(raw_ip)
            except ValueError:
                _invalid(problems, f"{ppath}.hostIP", raw_ip, "must be an IP address")
        ports.append(ContainerPort(container_port=number, protocol=_PROTOCOLS.get(_str(port, "protocol"), "TCP"),
                                   name=name, host_port=host_port, host_ip=host_ip))
    return tuple(ports)


def _env(doc: Doc, path: str, problems: Problems) -> EnvVar:
    name = _str(doc, "name")
    if name:
        problem = names.env_var_name(name)
        if problem:
            _invalid(problems, f"{path}.name", name, problem)
    elif _absent(doc, "name"):
        problems.missing(f"{path}.name")
    value = _str(doc, "value")
    source = None
    value_from = doc.get("valueFrom")
    if isinstance(value_from, dict):
        if value:
            problems.add(f"{path}.valueFrom", "may not be set when value is not empty")
        source = _env_source(value_from, f"{path}.valueFrom", problems)
    return EnvVar(name=name, value=value, value_from=source)


def _env_source(doc: Doc, path: str, problems: Problems) -> EnvVarSource | None:
    given = [key for key in (*_SUPPORTED_SOURCES, *_UNSUPPORTED_SOURCES) if _present(doc, key)]
    unsupported = [key for key in given if key in _UNSUPPORTED_SOURCES]
    if unsupported:
        problems.add(path, f"valueFrom.{unsupported[0]} is not supported by the embedded runtime "
                           "(only fieldRef and resourceFieldRef are)")
        return None
    if len(given) > 1:
        problems.add(path, "may not have more than one field specified at a time")
        return None
    if not given:
        if not doc:  # unknown fields alone were reported by the schema pass
            problems.add(path, "must set one of fieldRef, resourceFieldRef")
        return None
    if given[0] == "fieldRef":
        return _field_ref(_obj(doc, "fieldRef"), f"{path}.fieldRef", problems)
    return _resource_field_ref(_obj(doc, "resourceFieldRef"), f"{path}.resourceFieldRef", problems)


def _field_ref(doc: Doc, path: str, problems: Problems) -> FieldRef | None:
    api_version = _str(doc, "apiVersion")
    if api_version not in ("", "v1"):
        problems.add(f"{path}.apiVersion", f'expected "v1", got {show(api_version)}')
    field = _str(doc, "fieldPath")
    if not field:
        if _absent(doc, "fieldPath"):
            problems.missing(f"{path}.fieldPath")
        return None
    keyed = _KEYED_FIELD_PATH.fullmatch(field)
    if keyed:
        problem = names.qualified_name(keyed.group(2))
        if problem:
            _invalid(problems, f"{path}.fieldPath", field, f"invalid key: {problem}")
            return None
    elif field not in ENV_FIELD_PATHS:
        supported = ", ".join((*ENV_FIELD_PATHS, "metadata.labels['<key>']", "metadata.annotations['<key>']"))
        problems.add(f"{path}.fieldPath", f"unsupported field path {quoted(field)} (supported: {supported})")
        return None
    return FieldRef(field)


def _resource_field_ref(doc: Doc, path: str, problems: Problems) -> ResourceFieldRef | None:
    resource = _str(doc, "resource")
    divisor = _quantity(doc.get("divisor")) or "1"
    divisors: tuple[str, ...]
    if resource in CPU_RESOURCES:
        divisors = _CPU_DIVISORS
    elif resource in BYTE_RESOURCES:
        divisors = _BYTE_DIVISORS
    else:
        if resource:
            supported = ", ".join((*CPU_RESOURCES, *BYTE_RESOURCES))
            problems.add(f"{path}.resource", f"unsupported resource {quoted(resource)} (supported: {supported})")
        elif _absent(doc, "resource"):
            problems.missing(f"{path}.resource")
        return None
    if divisor not in divisors:
        problems.add(f"{path}.divisor", f"unsupported divisor {quoted(divisor)} for {resource} "
                                        f"(one of {', '.join(divisors)})")
        return None
    return ResourceFieldRef(resource=resource, container_name=_str(doc, "containerName"), divisor=divisor)


def _check_non_root(pod: Pod, problems: Problems) -> None:
    """kubelet refuses runAsNonRoot with uid 0; with no image user, that is known now."""
    groups = (("initContainers", pod.spec.init_containers), ("containers", pod.spec.containers))
    for key, containers in groups:
        for index, container in enumerate(containers):
            if container.run_as_non_root(pod) and container.uid(pod) == 0:
                problems.add(item_path(f"spec.{key}", index),
                             "runAsNonRoot is true but the container would run as uid 0 (set runAsUser)")
