"""Tables of the real Kubernetes ``core/v1`` field names and types, and a walker over them.

The walker checks a decoded manifest against a table: every key must be a field of that
Kubernetes type (an unknown one gets a "did you mean" from :mod:`difflib`), and every value
must have the field's JSON type (``true`` is not an integer). It knows nothing of what the
embedded runtime uses; the parsers check meaning after it. ``null`` is "unset", as in the
Kubernetes API. Deep, rarely written subtrees that weir ignores (affinity terms, legacy
volume plugins, ``status``) are :data:`OPAQUE`: any JSON value.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from weir.api.errors import Problems, field_path, item_path, quoted, show


@dataclass(frozen=True)
class Scalar:
    """``string``, ``integer``, ``boolean`` or ``number`` (JSON types)."""

    type: str


@dataclass(frozen=True)
class Enum:
    values: tuple[str, ...]


@dataclass(frozen=True)
class IntOrString:
    pass


@dataclass(frozen=True)
class Quantity:
    """A resource quantity: ``"100m"``, ``"1Gi"``, or a plain number."""


@dataclass(frozen=True)
class ListOf:
    item: Kind


@dataclass(frozen=True)
class MapOf:
    """A mapping with string keys (labels, limits ...)."""

    value: Kind


@dataclass(frozen=True)
class Opaque:
    """Any JSON value: a subtree weir neither uses nor tables."""


@dataclass(frozen=True)
class Checked:
    """A value of ``base`` that must also pass ``check``, which returns the problem or ``None``.

    ``check`` runs only when ``base`` accepted the value (a duration string, a port number).
    """

    base: Kind
    check: Callable[[object], str | None]


@dataclass(frozen=True)
class Obj:
    """An object type: its name and its fields; ``api`` says whose type it is, in messages."""

    name: str
    fields: Mapping[str, Kind]
    api: str = "a Kubernetes v1"


Kind = Scalar | Enum | IntOrString | Quantity | ListOf | MapOf | Opaque | Checked | Obj

STRING = Scalar("string")
INTEGER = Scalar("integer")
BOOLEAN = Scalar("boolean")
NUMBER = Scalar("number")
OPAQUE = Opaque()
STRINGS = ListOf(STRING)
STRING_MAP = MapOf(STRING)
QUANTITY = Quantity()
QUANTITIES = MapOf(QUANTITY)
INT_OR_STRING = IntOrString()

_QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?")

# --- small shared types -------------------------------------------------------------------

LOCAL_OBJECT_REFERENCE = Obj("LocalObjectReference", {"name": STRING})
OBJECT_FIELD_SELECTOR = Obj("ObjectFieldSelector", {"apiVersion": STRING, "fieldPath": STRING})
RESOURCE_FIELD_SELECTOR = Obj("ResourceFieldSelector",
                              {"containerName": STRING, "resource": STRING, "divisor": QUANTITY})
KEY_TO_PATH = Obj("KeyToPath", {"key": STRING, "path": STRING, "mode": INTEGER})
LABEL_SELECTOR = Obj("LabelSelector", {
    "matchLabels": STRING_MAP,
    "matchExpressions": ListOf(Obj("LabelSelectorRequirement",
                                   {"key": STRING, "operator": STRING, "values": STRINGS})),
})

# --- environment ---------------------------------------------------------------------------

CONFIG_MAP_KEY_SELECTOR = Obj("ConfigMapKeySelector", {"name": STRING, "key": STRING, "optional": BOOLEAN})
SECRET_KEY_SELECTOR = Obj("SecretKeySelector", {"name": STRING, "key": STRING, "optional": BOOLEAN})
FILE_KEY_SELECTOR = Obj("FileKeySelector",
                        {"volumeName": STRING, "path": STRING, "key": STRING, "optional": BOOLEAN})
ENV_VAR_SOURCE = Obj("EnvVarSource", {
    "fieldRef": OBJECT_FIELD_SELECTOR,
    "resourceFieldRef": RESOURCE_FIELD_SELECTOR,
    "configMapKeyRef": CONFIG_MAP_KEY_SELECTOR,
    "secretKeyRef": SECRET_KEY_SELECTOR,
    "fileKeyRef": FILE_KEY_SELECTOR,
})
ENV_VAR = Obj("EnvVar", {"name": STRING, "value": STRING, "valueFrom": ENV_VAR_SOURCE})
ENV_FROM_SOURCE = Obj("EnvFromSource", {
    "prefix": STRING,
    "configMapRef": Obj("ConfigMapEnvSource", {"name": STRING, "optional": BOOLEAN}),
    "secretRef": Obj("SecretEnvSource", {"name": STRING, "optional": BOOLEAN}),
})

# --- probes and lifecycle ------------------------------------------------------------------

EXEC_ACTION = Obj("ExecAction", {"command": STRINGS})
HTTP_GET_ACTION = Obj("HTTPGetAction", {
    "path": STRING, "port": INT_OR_STRING, "host": STRING, "scheme": Enum(("HTTP", "HTTPS")),
    "httpHeaders": ListOf(Obj("HTTPHeader", {"name": STRING, "value": STRING})),
})
TCP_SOCKET_ACTION = Obj("TCPSocketAction", {"port": INT_OR_STRING, "host": STRING})
GRPC_ACTION = Obj("GRPCAction", {"port": INTEGER, "service": STRING})
PROBE = Obj("Probe", {
    "exec": EXEC_ACTION, "httpGet": HTTP_GET_ACTION, "tcpSocket": TCP_SOCKET_ACTION, "grpc": GRPC_ACTION,
    "initialDelaySeconds": INTEGER, "timeoutSeconds": INTEGER, "periodSeconds": INTEGER,
    "successThreshold": INTEGER, "failureThreshold": INTEGER, "terminationGracePeriodSeconds": INTEGER,
})
LIFECYCLE_HANDLER = Obj("LifecycleHandler", {
    "exec": EXEC_ACTION, "httpGet": HTTP_GET_ACTION, "tcpSocket": TCP_SOCKET_ACTION,
    "sleep": Obj("SleepAction", {"seconds": INTEGER}),
})
LIFECYCLE = Obj("Lifecycle", {"postStart": LIFECYCLE_HANDLER, "preStop": LIFECYCLE_HANDLER, "stopSignal": STRING})

# --- security ------------------------------------------------------------------------------

CAPABILITIES = Obj("Capabilities", {"add": STRINGS, "drop": STRINGS})
SE_LINUX_OPTIONS = Obj("SELinuxOptions", {"user": STRING, "role": STRING, "type": STRING, "level": STRING})
WINDOWS_OPTIONS = Obj("WindowsSecurityContextOptions", {
    "gmsaCredentialSpecName": STRING, "gmsaCredentialSpec": STRING, "runAsUserName": STRING,
    "hostProcess": BOOLEAN,
})
SECCOMP_PROFILE = Obj("SeccompProfile", {
    "type": Enum(("Unconfined", "RuntimeDefault", "Localhost")), "localhostProfile": STRING,
})
APP_ARMOR_PROFILE = Obj("AppArmorProfile", {
    "type": Enum(("Unconfined", "RuntimeDefault", "Localhost")), "localhostProfile": STRING,
})
SECURITY_CONTEXT = Obj("SecurityContext", {
    "capabilities": CAPABILITIES, "privileged": BOOLEAN, "seLinuxOptions": SE_LINUX_OPTIONS,
    "windowsOptions": WINDOWS_OPTIONS, "runAsUser": INTEGER, "runAsGroup": INTEGER, "runAsNonRoot": BOOLEAN,
    "readOnlyRootFilesystem": BOOLEAN, "allowPrivilegeEscalation": BOOLEAN,
    "procMount": Enum(("Default", "Unmasked")), "seccompProfile": SECCOMP_PROFILE,
    "appArmorProfile": APP_ARMOR_PROFILE,
})
POD_SECURITY_CONTEXT = Obj("PodSecurityContext", {
    "seLinuxOptions": SE_LINUX_OPTIONS, "windowsOptions": WINDOWS_OPTIONS, "runAsUser": INTEGER,
    "runAsGroup": INTEGER, "runAsNonRoot": BOOLEAN, "supplementalGroups": ListOf(INTEGER),
    "supplementalGroupsPolicy": Enum(("Merge", "Strict")), "fsGroup": INTEGER,
    "sysctls": ListOf(Obj("Sysctl", {"name": STRING, "value": STRING})),
    "fsGroupChangePolicy": Enum(("OnRootMismatch", "Always")), "seccompProfile": SECCOMP_PROFILE,
    "appArmorProfile": APP_ARMOR_PROFILE, "seLinuxChangePolicy": STRING,
})

# --- containers ----------------------------------------------------------------------------

CONTAINER_PORT = Obj("ContainerPort", {
    "name": STRING, "hostPort": INTEGER, "containerPort": INTEGER,
    "protocol": Enum(("TCP", "UDP", "SCTP")), "hostIP": STRING,
})
RESOURCE_REQUIREMENTS = Obj("ResourceRequirements", {
    "limits": QUANTITIES, "requests": QUANTITIES,
    "claims": ListOf(Obj("ResourceClaim", {"name": STRING, "request": STRING})),
})
VOLUME_MOUNT = Obj("VolumeMount", {
    "name": STRING, "readOnly": BOOLEAN, "recursiveReadOnly": Enum(("Disabled", "IfPossible", "Enabled")),
    "mountPath": STRING, "subPath": STRING,
    "mountPropagation": Enum(("None", "HostToContainer", "Bidirectional")), "subPathExpr": STRING,
})
CONTAINER = Obj("Container", {
    "name": STRING, "image": STRING, "command": STRINGS, "args": STRINGS, "workingDir": STRING,
    "ports": ListOf(CONTAINER_PORT), "envFrom": ListOf(ENV_FROM_SOURCE), "env": ListOf(ENV_VAR),
    "resources": RESOURCE_REQUIREMENTS,
    "resizePolicy": ListOf(Obj("ContainerResizePolicy", {"resourceName": STRING, "restartPolicy": STRING})),
    "restartPolicy": Enum(("Always",)),
    "volumeMounts": ListOf(VOLUME_MOUNT),
    "volumeDevices": ListOf(Obj("VolumeDevice", {"name": STRING, "devicePath": STRING})),
    "livenessProbe": PROBE, "readinessProbe": PROBE, "startupProbe": PROBE, "lifecycle": LIFECYCLE,
    "terminationMessagePath": STRING,
    "terminationMessagePolicy": Enum(("File", "FallbackToLogsOnError")),
    "imagePullPolicy": Enum(("Always", "Never", "IfNotPresent")),
    "securityContext": SECURITY_CONTEXT, "stdin": BOOLEAN, "stdinOnce": BOOLEAN, "tty": BOOLEAN,
})

# --- volumes (the common sources tabled; legacy in-tree plugins opaque) --------------------

_DOWNWARD_API_FILE = Obj("DownwardAPIVolumeFile", {
    "path": STRING, "fieldRef": OBJECT_FIELD_SELECTOR, "resourceFieldRef": RESOURCE_FIELD_SELECTOR,
    "mode": INTEGER,
})
_VOLUME_PROJECTION = Obj("VolumeProjection", {
    "secret": Obj("SecretProjection", {"name": STRING, "items": ListOf(KEY_TO_PATH), "optional": BOOLEAN}),
    "downwardAPI": Obj("DownwardAPIProjection", {"items": ListOf(_DOWNWARD_API_FILE)}),
    "configMap": Obj("ConfigMapProjection", {"name": STRING, "items": ListOf(KEY_TO_PATH), "optional": BOOLEAN}),
    "serviceAccountToken": Obj("ServiceAccountTokenProjection",
                               {"audience": STRING, "expirationSeconds": INTEGER, "path": STRING}),
    "clusterTrustBundle": Obj("ClusterTrustBundleProjection", {
        "name": STRING, "signerName": STRING, "labelSelector": LABEL_SELECTOR, "optional": BOOLEAN,
        "path": STRING,
    }),
    "podCertificate": OPAQUE,
})
_LEGACY_VOLUME_SOURCES = (
    "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "iscsi", "glusterfs", "rbd", "flexVolume",
    "cinder", "cephfs", "flocker", "fc", "azureFile", "vsphereVolume", "quobyte", "azureDisk",
    "photonPersistentDisk", "portworxVolume", "scaleIO", "storageos",
)
VOLUME = Obj("Volume", {
    "name": STRING,
    "hostPath": Obj("HostPathVolumeSource", {"path": STRING, "type": STRING}),
    "emptyDir": Obj("EmptyDirVolumeSource", {"medium": STRING, "sizeLimit": QUANTITY}),
    "secret": Obj("SecretVolumeSource", {
        "secretName": STRING, "items": ListOf(KEY_TO_PATH), "defaultMode": INTEGER, "optional": BOOLEAN,
    }),
    "configMap": Obj("ConfigMapVolumeSource", {
        "name": STRING, "items": ListOf(KEY_TO_PATH), "defaultMode": INTEGER, "optional": BOOLEAN,
    }),
    "downwardAPI": Obj("DownwardAPIVolumeSource", {"items": ListOf(_DOWNWARD_API_FILE), "defaultMode": INTEGER}),
    "projected": Obj("ProjectedVolumeSource", {"sources": ListOf(_VOLUME_PROJECTION), "defaultMode": INTEGER}),
    "persistentVolumeClaim": Obj("PersistentVolumeClaimVolumeSource", {"claimName": STRING, "readOnly": BOOLEAN}),
    "nfs": Obj("NFSVolumeSource", {"server": STRING, "path": STRING, "readOnly": BOOLEAN}),
    "csi": Obj("CSIVolumeSource", {
        "driver": STRING, "readOnly": BOOLEAN, "fsType": STRING, "volumeAttributes": STRING_MAP,
        "nodePublishSecretRef": LOCAL_OBJECT_REFERENCE,
    }),
    "ephemeral": Obj("EphemeralVolumeSource", {"volumeClaimTemplate": OPAQUE}),
    "image": Obj("ImageVolumeSource", {"reference": STRING, "pullPolicy": Enum(("Always", "Never", "IfNotPresent"))}),
    **dict.fromkeys(_LEGACY_VOLUME_SOURCES, OPAQUE),
})

# --- the pod -------------------------------------------------------------------------------

POD_SPEC = Obj("PodSpec", {
    "volumes": ListOf(VOLUME),
    "initContainers": ListOf(CONTAINER),
    "containers": ListOf(CONTAINER),
    "ephemeralContainers": ListOf(OPAQUE),
    "restartPolicy": Enum(("Always", "OnFailure", "Never")),
    "terminationGracePeriodSeconds": INTEGER,
    "activeDeadlineSeconds": INTEGER,
    "dnsPolicy": Enum(("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")),
    "nodeSelector": STRING_MAP,
    "serviceAccountName": STRING,
    "serviceAccount": STRING,
    "automountServiceAccountToken": BOOLEAN,
    "nodeName": STRING,
    "hostNetwork": BOOLEAN,
    "hostPID": BOOLEAN,
    "hostIPC": BOOLEAN,
    "shareProcessNamespace": BOOLEAN,
    "securityContext": POD_SECURITY_CONTEXT,
    "imagePullSecrets": ListOf(LOCAL_OBJECT_REFERENCE),
    "hostname": STRING,
    "hostnameOverride": STRING,
    "subdomain": STRING,
    "affinity": Obj("Affinity", {"nodeAffinity": OPAQUE, "podAffinity": OPAQUE, "podAntiAffinity": OPAQUE}),
    "schedulerName": STRING,
    "tolerations": ListOf(Obj("Toleration", {
        "key": STRING, "operator": Enum(("Exists", "Equal")), "value": STRING,
        "effect": Enum(("NoSchedule", "PreferNoSchedule", "NoExecute")), "tolerationSeconds": INTEGER,
    })),
    "hostAliases": ListOf(Obj("HostAlias", {"ip": STRING, "hostnames": STRINGS})),
    "priorityClassName": STRING,
    "priority": INTEGER,
    "dnsConfig": Obj("PodDNSConfig", {
        "nameservers": STRINGS, "searches": STRINGS,
        "options": ListOf(Obj("PodDNSConfigOption", {"name": STRING, "value": STRING})),
    }),
    "readinessGates": ListOf(Obj("PodReadinessGate", {"conditionType": STRING})),
    "runtimeClassName": STRING,
    "enableServiceLinks": BOOLEAN,
    "preemptionPolicy": Enum(("PreemptLowerPriority", "Never")),
    "overhead": QUANTITIES,
    "topologySpreadConstraints": ListOf(Obj("TopologySpreadConstraint", {
        "maxSkew": INTEGER, "topologyKey": STRING,
        "whenUnsatisfiable": Enum(("DoNotSchedule", "ScheduleAnyway")), "labelSelector": LABEL_SELECTOR,
        "minDomains": INTEGER, "nodeAffinityPolicy": Enum(("Honor", "Ignore")),
        "nodeTaintsPolicy": Enum(("Honor", "Ignore")), "matchLabelKeys": STRINGS,
    })),
    "setHostnameAsFQDN": BOOLEAN,
    "os": Obj("PodOS", {"name": Enum(("linux", "windows"))}),
    "hostUsers": BOOLEAN,
    "schedulingGates": ListOf(Obj("PodSchedulingGate", {"name": STRING})),
    "resourceClaims": ListOf(Obj("PodResourceClaim", {
        "name": STRING, "resourceClaimName": STRING, "resourceClaimTemplateName": STRING,
    })),
    "resources": RESOURCE_REQUIREMENTS,
})
OBJECT_META = Obj("ObjectMeta", {
    "name": STRING, "generateName": STRING, "namespace": STRING, "selfLink": STRING, "uid": STRING,
    "resourceVersion": STRING, "generation": INTEGER, "creationTimestamp": OPAQUE,
    "deletionTimestamp": OPAQUE, "deletionGracePeriodSeconds": INTEGER, "labels": STRING_MAP,
    "annotations": STRING_MAP,
    "ownerReferences": ListOf(Obj("OwnerReference", {
        "apiVersion": STRING, "kind": STRING, "name": STRING, "uid": STRING, "controller": BOOLEAN,
        "blockOwnerDeletion": BOOLEAN,
    })),
    "finalizers": STRINGS, "managedFields": ListOf(OPAQUE),
})
POD = Obj("Pod", {"apiVersion": STRING, "kind": STRING, "metadata": OBJECT_META, "spec": POD_SPEC,
                  "status": OPAQUE})


# --- the walker ----------------------------------------------------------------------------

_ARTICLE = {"string": "a string", "integer": "an integer", "boolean": "a boolean", "number": "a number"}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _scalar_ok(type_: str, value: object) -> bool:
    if type_ == "string":
        return isinstance(value, str)
    if type_ == "integer":
        return _is_int(value)
    if type_ == "boolean":
        return isinstance(value, bool)
    return _is_int(value) or isinstance(value, float)


def _wrong(problems: Problems, path: str, expected: str, value: object) -> None:
    hint = " (quote it in YAML)" if expected == "a string" and isinstance(value, int | float) else ""
    problems.add(path, f"expected {expected}, got {show(value)}{hint}")


def check(value: object, kind: Kind, path: str, problems: Problems) -> None:
    """Report every unknown field and wrongly typed value under ``value`` (``null`` is unset)."""
    if value is None or isinstance(kind, Opaque):
        return
    if isinstance(kind, Scalar):
        if not _scalar_ok(kind.type, value):
            _wrong(problems, path, _ARTICLE[kind.type], value)
    elif isinstance(kind, Enum):
        if not isinstance(value, str):
            _wrong(problems, path, "a string", value)
        elif value not in kind.values:
            choices = ", ".join(f'"{v}"' for v in kind.values)
            problems.add(path, f"unsupported value {quoted(value)} (expected one of {choices})")
    elif isinstance(kind, IntOrString):
        if not (_is_int(value) or isinstance(value, str)):
            _wrong(problems, path, "an integer or a string", value)
    elif isinstance(kind, Quantity):
        if isinstance(value, str):
            if not _QUANTITY.fullmatch(value):
                problems.add(path, f"invalid quantity {quoted(value)} (e.g. \"100m\", \"1Gi\", \"2\")")
        elif not (_is_int(value) or isinstance(value, float)):
            _wrong(problems, path, "a quantity (a string like \"100m\" or a number)", value)
    elif isinstance(kind, ListOf):
        if not isinstance(value, list):
            _wrong(problems, path, "a list", value)
            return
        for index, item in enumerate(value):
            if item is None and not isinstance(kind.item, Opaque):
                problems.add(item_path(path, index), "expected a value, got null")
            else:
                check(item, kind.item, item_path(path, index), problems)
    elif isinstance(kind, Checked):
        before = len(problems.items)
        check(value, kind.base, path, problems)
        problem = kind.check(value) if len(problems.items) == before else None
        if problem:
            problems.add(path, problem)
    elif isinstance(kind, MapOf):
        if not isinstance(value, dict):
            _wrong(problems, path, "a mapping", value)
            return
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add(path, f"keys must be strings, got {show(key)}")
            elif item is None:
                problems.add(field_path(path, key), "expected a value, got null")
            else:
                check(item, kind.value, field_path(path, key), problems)
    else:
        check_object(value, kind, path, problems)


def check_object(value: object, kind: Obj, path: str, problems: Problems) -> None:
    if not isinstance(value, dict):
        _wrong(problems, path, f"a mapping ({kind.name})", value)
        return
    for key, item in value.items():
        if not isinstance(key, str):
            problems.add(path, f"field names must be strings, got {show(key)}")
            continue
        field_kind = kind.fields.get(key)
        if field_kind is None:
            suggestion = closest_field(key, kind)
            if suggestion:
                problems.suggested.add(field_path(path, suggestion))
                problems.add(field_path(path, key), f'unknown field (did you mean "{suggestion}"?)')
            else:
                problems.add(field_path(path, key), f"unknown field (not a field of {kind.api} {kind.name})")
        else:
            check(item, field_kind, field_path(path, key), problems)


def closest_field(key: str, kind: Obj) -> str | None:
    """The field of ``kind`` that ``key`` most likely misspells (case aside), if any."""
    by_lower = {name.lower(): name for name in kind.fields}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1)
    return by_lower[close[0]] if close else None
