"""The Kubernetes v1 Pod as the embedded runtime runs it: frozen dataclasses, already valid.

Only what the runtime acts on is modelled (processes, their uids, env, ports, restart rules,
probes); every other Kubernetes field is checked by :func:`weir.api.pod.parse_pod` and then
left in :attr:`Pod.raw`, where the node agent reads annotations and env with Istio's rules.
Values are built by the parser; constructing them by hand (tests, the runtime) trusts the
caller. Mappings are read-only views.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from weir.api.meta import ObjectMeta

RestartPolicy = Literal["Always", "OnFailure", "Never"]
ProbeKind = Literal["startup", "readiness", "liveness"]
Scheme = Literal["HTTP", "HTTPS"]
Protocol = Literal["TCP", "UDP", "SCTP"]
TerminationMessagePolicy = Literal["File", "FallbackToLogsOnError"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS = 30
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
DEFAULT_SERVICE_ACCOUNT = "default"
MAX_ID = 2147483647  # runAsUser, runAsGroup, fsGroup, supplementalGroups

# fieldRef paths an env var may take (Kubernetes' list for env; labels/annotations take a key).
ENV_FIELD_PATHS = (
    "metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName",
    "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs",
)
CPU_RESOURCES = ("limits.cpu", "requests.cpu")
BYTE_RESOURCES = ("limits.memory", "requests.memory", "limits.ephemeral-storage", "requests.ephemeral-storage")


# Kubernetes' probe defaults (SetDefaults_Probe: a 0 in the manifest means the default too).
DEFAULT_PROBE_PERIOD_SECONDS = 10
DEFAULT_PROBE_TIMEOUT_SECONDS = 1
DEFAULT_PROBE_SUCCESS_THRESHOLD = 1
DEFAULT_PROBE_FAILURE_THRESHOLD = 3


def _frozen_map() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class FieldRef:
    """``valueFrom.fieldRef``: one of :data:`ENV_FIELD_PATHS` or ``metadata.labels['key']`` /
    ``metadata.annotations['key']``; the runtime resolves it when it starts the container."""

    field_path: str


@dataclass(frozen=True)
class ResourceFieldRef:
    """``valueFrom.resourceFieldRef``: a container's limit or request, divided by ``divisor``.
    ``container_name`` empty means the container that holds the env var."""

    resource: str
    container_name: str = ""
    divisor: str = "1"


EnvVarSource = FieldRef | ResourceFieldRef


@dataclass(frozen=True)
class EnvVar:
    """One ``env`` entry. Duplicated names are kept in order; the last one wins, as in Kubernetes."""

    name: str
    value: str = ""
    value_from: EnvVarSource | None = None


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    protocol: Protocol = "TCP"
    name: str = ""
    host_port: int | None = None
    host_ip: IPAddress | None = None


@dataclass(frozen=True)
class Capabilities:
    add: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SecurityContext:
    """A container's ``securityContext``; ``None`` means unset (the pod's value applies)."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    capabilities: Capabilities = field(default_factory=Capabilities)
    privileged: bool | None = None
    read_only_root_filesystem: bool | None = None
    allow_privilege_escalation: bool | None = None


@dataclass(frozen=True)
class Sysctl:
    name: str
    value: str


@dataclass(frozen=True, kw_only=True)
class PodSecurityContext:
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    fs_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    sysctls: tuple[Sysctl, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ResourceRequirements:
    """Quantities as written (``"100m"``, ``"1Gi"``); the runtime reads them for resourceFieldRef."""

    limits: Mapping[str, str] = field(default_factory=_frozen_map)
    requests: Mapping[str, str] = field(default_factory=_frozen_map)


@dataclass(frozen=True)
class HTTPHeader:
    name: str
    value: str


@dataclass(frozen=True, kw_only=True)
class HTTPGetAction:
    """``httpGet``: success is a status from 200 to 399. ``port`` is a number or the name of one
    of the container's ports; ``host`` empty means the pod itself (see :mod:`weir.runtime.probes`)."""

    port: int | str
    path: str = "/"
    host: str = ""
    scheme: Scheme = "HTTP"
    http_headers: tuple[HTTPHeader, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TCPSocketAction:
    """``tcpSocket``: success is an accepted connection."""

    port: int | str
    host: str = ""


@dataclass(frozen=True)
class ExecAction:
    """``exec``: the command runs as the container's user, in its environment; exit 0 is success."""

    command: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class GRPCAction:
    """``grpc``: ``grpc.health.v1.Health/Check`` for ``service``; ``SERVING`` is success."""

    port: int
    service: str = ""


ProbeHandler = HTTPGetAction | TCPSocketAction | ExecAction | GRPCAction


@dataclass(frozen=True, kw_only=True)
class Probe:
    """A container probe as Kubernetes defines it: one handler, how often it runs, how long one
    attempt may take, and how many results in a row flip the outcome."""

    handler: ProbeHandler
    initial_delay_seconds: int = 0
    period_seconds: int = DEFAULT_PROBE_PERIOD_SECONDS
    timeout_seconds: int = DEFAULT_PROBE_TIMEOUT_SECONDS
    success_threshold: int = DEFAULT_PROBE_SUCCESS_THRESHOLD
    failure_threshold: int = DEFAULT_PROBE_FAILURE_THRESHOLD
    termination_grace_period_seconds: int | None = None
    """Liveness and startup only: the grace period of a kill for a failed probe (else the pod's)."""

    @property
    def http_get(self) -> HTTPGetAction | None:
        return self.handler if isinstance(self.handler, HTTPGetAction) else None

    @property
    def tcp_socket(self) -> TCPSocketAction | None:
        return self.handler if isinstance(self.handler, TCPSocketAction) else None

    @property
    def exec(self) -> ExecAction | None:
        return self.handler if isinstance(self.handler, ExecAction) else None

    @property
    def grpc(self) -> GRPCAction | None:
        return self.handler if isinstance(self.handler, GRPCAction) else None


@dataclass(frozen=True, kw_only=True)
class Container:
    name: str
    command: tuple[str, ...]
    """Required and non-empty: there is no image entrypoint to fall back to."""
    args: tuple[str, ...] = ()
    image: str | None = None
    """Accepted and ignored: the embedded runtime runs host binaries."""
    env: tuple[EnvVar, ...] = ()
    working_dir: str | None = None
    ports: tuple[ContainerPort, ...] = ()
    security_context: SecurityContext = field(default_factory=SecurityContext)
    resources: ResourceRequirements = field(default_factory=ResourceRequirements)
    restart_policy: Literal["Always"] | None = None
    """Only on init containers: ``"Always"`` makes a native sidecar."""
    termination_message_path: str = DEFAULT_TERMINATION_MESSAGE_PATH
    termination_message_policy: TerminationMessagePolicy = "File"
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    startup_probe: Probe | None = None
    """Probes are only on containers and native sidecars (the parser refuses them elsewhere)."""

    @property
    def is_native_sidecar(self) -> bool:
        return self.restart_policy == "Always"

    def probe(self, kind: ProbeKind) -> Probe | None:
        return {"startup": self.startup_probe, "readiness": self.readiness_probe,
                "liveness": self.liveness_probe}[kind]

    def port_number(self, port: int | str) -> int | None:
        """A probe's port: a number as it is, a name looked up in ``ports`` (None: no such port)."""
        if isinstance(port, int):
            return port
        return next((p.container_port for p in self.ports if p.name == port), None)

    def uid(self, pod: Pod) -> int:
        """The uid the process runs as: container securityContext, else the pod's, else 0."""
        return _first(self.security_context.run_as_user, pod.spec.security_context.run_as_user)

    def gid(self, pod: Pod) -> int:
        return _first(self.security_context.run_as_group, pod.spec.security_context.run_as_group)

    def run_as_non_root(self, pod: Pod) -> bool:
        value = self.security_context.run_as_non_root
        return bool(pod.spec.security_context.run_as_non_root if value is None else value)


def _first(container: int | None, pod: int | None) -> int:
    if container is not None:
        return container
    return 0 if pod is None else pod


@dataclass(frozen=True, kw_only=True)
class PodSpec:
    containers: tuple[Container, ...]
    init_containers: tuple[Container, ...] = ()
    restart_policy: RestartPolicy = "Always"
    termination_grace_period_seconds: int = DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS
    security_context: PodSecurityContext = field(default_factory=PodSecurityContext)
    service_account_name: str = DEFAULT_SERVICE_ACCOUNT

    @property
    def all_containers(self) -> tuple[Container, ...]:
        """Init containers (in order), then containers."""
        return (*self.init_containers, *self.containers)


@dataclass(frozen=True, kw_only=True)
class Pod:
    metadata: ObjectMeta
    spec: PodSpec
    api_version: str = "v1"
    kind: str = "Pod"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """A deep copy of the manifest as given (``status`` included). Read it, do not change it:
    :func:`weir.api.pod.pod_to_dict` gives a fresh dict to store or show."""

    def container(self, name: str) -> Container | None:
        """The container or init container called ``name``."""
        return next((c for c in self.spec.all_containers if c.name == name), None)
