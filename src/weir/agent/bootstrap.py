"""Envoy's bootstrap for a sidecar: pilot-agent's ``envoy-rev.json``, as a pure function.

:func:`render_bootstrap` turns a :class:`BootstrapParams` into the Envoy v3 bootstrap (a JSON
object as a ``dict``), following Istio's ``envoy_bootstrap.json`` template where it matters to
the rest of the mesh:

- the node: id ``sidecar~<pod IP>~<pod>.<ns>~<ns>.svc.cluster.local``, cluster ``<app>.<ns>``
  and Istio's metadata keys (``NAMESPACE``, ``INSTANCE_IPS``, ``SERVICE_ACCOUNT``, ``LABELS``
  ...), which the control plane reads to pick the proxy's configuration;
- admin on ``127.0.0.1:15000``; ADS over gRPC (v3, node on the first message only) to the
  ``xds-grpc`` cluster, which points at the control plane over TCP (plaintext for now) or a
  UNIX socket;
- static listeners: Prometheus on ``:15090`` (``/stats/prometheus`` to the admin port) and
  readiness on ``:15021`` (``/healthz/ready`` to the agent's status server, ``:15020``);
- ``sds-grpc`` on the agent's SDS UNIX socket, Istio's stats tags, a layered runtime (static
  flags, then the admin layer) and an overload manager that caps downstream connections.

Nothing here reads a file, a clock or the environment; the driver (:mod:`weir.agent.envoy`)
writes the result and runs Envoy on it. This module must not know about processes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

ADMIN_PORT: Final = 15000
STATUS_PORT: Final = 15020
"""The agent's status server (Istio's ``STATUS_PORT``), where ``:15021/healthz/ready`` goes."""
HEALTH_PORT: Final = 15021
PROMETHEUS_PORT: Final = 15090
DEFAULT_SDS_PATH: Final = "./var/run/secrets/workload-spiffe-uds/socket"
"""Istio's SDS socket, relative to Envoy's working directory (``/`` in a pod)."""
DEFAULT_ISTIO_VERSION: Final = "1.24.0"
"""What ``ISTIO_VERSION`` says: the Istio release whose conventions weir follows."""
XDS_CLUSTER: Final = "xds-grpc"
SDS_CLUSTER: Final = "sds-grpc"
ADMIN_CLUSTER: Final = "prometheus_stats"
AGENT_CLUSTER: Final = "agent"

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_DOWNSTREAM_CONNECTIONS = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig")
_MAX_CONNECTIONS = 2**31 - 1


class BootstrapError(ValueError):
    """A bootstrap parameter is out of range; the message names the field and the value."""


@dataclass(frozen=True)
class TcpAddress:
    """A TCP endpoint: an IP literal, or (for the control plane only) a DNS name, and a port."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host:
            raise BootstrapError("address: empty host")
        if not 0 < self.port < 65536:
            raise BootstrapError(f"address {self.host}: port {self.port} is not in 1..65535")

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UnixAddress:
    """A UNIX stream socket by path (relative paths are relative to Envoy's working directory)."""

    path: str

    def __post_init__(self) -> None:
        if not self.path:
            raise BootstrapError("address: empty UNIX socket path")

    def __str__(self) -> str:
        return f"unix://{self.path}"


Address = TcpAddress | UnixAddress


def parse_address(text: str, what: str = "address") -> Address:
    """``host:port``, ``[v6]:port`` or ``unix:///path`` (also ``unix:path``) as a typed address."""
    if text.startswith("unix://"):
        return UnixAddress(text.removeprefix("unix://"))
    if text.startswith("unix:"):
        return UnixAddress(text.removeprefix("unix:"))
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise BootstrapError(f"{what}: {text!r} is not host:port or unix:///path")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise BootstrapError(f"{what}: {text!r}: write an IPv6 host in brackets, [addr]:port")
    return TcpAddress(host, int(port))


@dataclass(frozen=True)
class BootstrapParams:
    """What one sidecar's bootstrap depends on. Settings are Istio's where Istio has one."""

    pod_name: str
    namespace: str
    pod_ips: tuple[str, ...]
    """The pod's addresses, first one in the node id (``INSTANCE_IPS`` lists them all)."""
    service_account: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    app: str | None = None
    """The service cluster's name part; ``None`` takes Istio's canonical name from the labels
    (``service.istio.io/canonical-name``, ``app.kubernetes.io/name``, ``app``), else the pod."""
    xds_address: Address = field(default_factory=lambda: TcpAddress("istiod.istio-system.svc", 15010))
    """The control plane's ADS endpoint (plaintext TCP for now, or a UNIX socket)."""
    sds_path: str = DEFAULT_SDS_PATH
    status_address: TcpAddress = field(default_factory=lambda: TcpAddress("127.0.0.1", STATUS_PORT))
    """Where ``:15021/healthz/ready`` is routed: the agent's status server."""
    admin_port: int = ADMIN_PORT
    dns_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    mesh_id: str = "cluster.local"
    istio_version: str = DEFAULT_ISTIO_VERSION
    node_name: str = ""
    interception_mode: str = "REDIRECT"
    runtime: Mapping[str, str | int | float | bool] = field(
        default_factory=lambda: {"re2.max_program_size.error_level": 32768})
    """Envoy's static runtime layer (Istio's ``runtime_flags``)."""

    def __post_init__(self) -> None:
        for name in ("pod_name", "namespace", "service_account"):
            if not getattr(self, name):
                raise BootstrapError(f"{name}: must not be empty")
        if not self.pod_ips:
            raise BootstrapError("pod_ips: a sidecar needs at least one pod IP")
        for ip in self.pod_ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise BootstrapError(f"pod_ips: {ip!r} is not an IP address") from None
        if not 0 < self.admin_port < 65536:
            raise BootstrapError(f"admin_port: {self.admin_port} is not in 1..65535")
        if not self.status_address.is_ip:
            raise BootstrapError(f"status_address: {self.status_address.host!r} must be an IP literal")
        if not self.sds_path:
            raise BootstrapError("sds_path: must not be empty")


def service_cluster(params: BootstrapParams) -> str:
    """``<app>.<namespace>``: Envoy's ``--service-cluster`` in Istio."""
    app = params.app
    if app is None:
        for key in ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app"):
            if params.labels.get(key):
                app = params.labels[key]
                break
        else:
            app = params.pod_name
    return f"{app}.{params.namespace}"


def node_id(params: BootstrapParams) -> str:
    """Istio's sidecar node id: ``sidecar~<IP>~<pod>.<ns>~<ns>.svc.<domain>``."""
    ns = params.namespace
    return f"sidecar~{params.pod_ips[0]}~{params.pod_name}.{ns}~{ns}.svc.{params.dns_domain}"


def node_metadata(params: BootstrapParams) -> dict[str, Any]:
    """Istio's node metadata keys (``ISTIO_META_*`` without the prefix), values as Istio sends them."""
    meta: dict[str, Any] = {
        "NAME": params.pod_name,
        "NAMESPACE": params.namespace,
        "INSTANCE_IPS": ",".join(params.pod_ips),
        "SERVICE_ACCOUNT": params.service_account,
        "LABELS": dict(sorted(params.labels.items())),
        "ISTIO_VERSION": params.istio_version,
        "CLUSTER_ID": params.cluster_id,
        "MESH_ID": params.mesh_id,
        "INTERCEPTION_MODE": params.interception_mode,
        "ENVOY_STATUS_PORT": HEALTH_PORT,
        "ENVOY_PROMETHEUS_PORT": PROMETHEUS_PORT,
        "WORKLOAD_NAME": params.pod_name,
    }
    if params.node_name:
        meta["NODE_NAME"] = params.node_name
    return meta


def _endpoint(address: Address) -> dict[str, Any]:
    if isinstance(address, UnixAddress):
        return {"pipe": {"path": address.path}}
    return {"socket_address": {"protocol": "TCP", "address": address.host, "port_value": address.port}}


def _cluster(name: str, address: Address, connect_timeout: str, *, http2: bool = False) -> dict[str, Any]:
    dns = isinstance(address, TcpAddress) and not address.is_ip
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS" if dns else "STATIC",
        "connect_timeout": connect_timeout,
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _endpoint(address)}}]}],
        },
    }
    if dns:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        }
    return cluster


def _xds_cluster(address: Address) -> dict[str, Any]:
    cluster = _cluster(XDS_CLUSTER, address, "1s", http2=True)
    limits = {"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}
    cluster["circuit_breakers"] = {"thresholds": [{"priority": "DEFAULT", **limits}, {"priority": "HIGH", **limits}]}
    cluster["upstream_connection_options"] = {"tcp_keepalive": {"keepalive_time": 300}}
    return cluster


def _http_listener(name: str, port: int, stat_prefix: str, prefix: str, cluster: str) -> dict[str, Any]:
    manager = {
        "@type": _HCM,
        "codec_type": "AUTO",
        "stat_prefix": stat_prefix,
        "route_config": {
            "virtual_hosts": [{
                "name": "backend",
                "domains": ["*"],
                "routes": [{"match": {"prefix": prefix}, "route": {"cluster": cluster}}],
            }],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    return {
        "name": name,
        "address": {"socket_address": {"protocol": "TCP", "address": "0.0.0.0", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": manager}]}],
    }


def _stats_tags(dns_domain: str) -> list[dict[str, str]]:
    domain = dns_domain.replace(".", "\\.")
    return [
        {"tag_name": "cluster_name", "regex": f"^cluster\\.((.+?(\\..+?\\.svc\\.{domain})?)\\.)"},
        {"tag_name": "tcp_prefix", "regex": "^tcp\\.((.*?)\\.)\\w+?$"},
        {"tag_name": "response_code", "regex": "_rq(_(\\d{3}))$"},
        {"tag_name": "response_code_class", "regex": "_rq(_(\\dxx))$"},
    ]


def render_bootstrap(params: BootstrapParams) -> dict[str, Any]:
    """The Envoy v3 bootstrap for one sidecar (see the module docstring for what it holds)."""
    admin = TcpAddress("127.0.0.1", params.admin_port)
    ads_source = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
    return {
        "node": {
            "id": node_id(params),
            "cluster": service_cluster(params),
            "metadata": node_metadata(params),
        },
        "layered_runtime": {
            "layers": [
                {"name": "global config", "static_layer": dict(sorted(params.runtime.items()))},
                {"name": "admin", "admin_layer": {}},
            ],
        },
        "stats_config": {"use_all_default_tags": False, "stats_tags": _stats_tags(params.dns_domain)},
        "admin": {"address": _endpoint(admin)},
        "dynamic_resources": {
            "lds_config": dict(ads_source),
            "cds_config": dict(ads_source),
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
        },
        "static_resources": {
            "clusters": [
                _cluster(ADMIN_CLUSTER, admin, "0.250s"),
                _cluster(AGENT_CLUSTER, params.status_address, "0.250s"),
                _cluster(SDS_CLUSTER, UnixAddress(params.sds_path), "1s", http2=True),
                _xds_cluster(params.xds_address),
            ],
            "listeners": [
                _http_listener("prometheus", PROMETHEUS_PORT, "stats", "/stats/prometheus", ADMIN_CLUSTER),
                _http_listener("health", HEALTH_PORT, "agent", "/healthz/ready", AGENT_CLUSTER),
            ],
        },
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {"@type": _DOWNSTREAM_CONNECTIONS,
                                 "max_active_downstream_connections": _MAX_CONNECTIONS},
            }],
        },
    }
