"""Small builders for Envoy v3 API values as JSON-able dicts (the shapes ``compile`` assembles).

Each ``typed_config`` carries its ``@type`` URL, so the dicts convert to protobuf with
``google.protobuf.json_format.ParseDict`` and the ``xds-protos`` types. Field names are the
protos' snake_case names. Nothing here knows Istio resources or the registry.
"""

from __future__ import annotations

import datetime
from typing import Any

JSON = dict[str, Any]

TYPE = "type.googleapis.com/"
HCM = TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = TYPE + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = TYPE + "envoy.extensions.filters.http.router.v3.Router"
UPSTREAM_TLS = TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = TYPE + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
RAW_BUFFER = TYPE + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
HTTP_OPTIONS = TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
PREVIOUS_HOSTS = TYPE + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"

SDS_CLUSTER = "sds-grpc"
"""The agent's SDS server, as Istio's bootstrap names it."""
SECRET_CERT = "default"  # noqa: S105 (a secret name, not a secret)
SECRET_ROOT = "ROOTCA"  # noqa: S105


def duration(value: datetime.timedelta) -> str:
    """Protobuf JSON's Duration: ``"1.500s"`` -> ``"1.5s"``."""
    micros = value // datetime.timedelta(microseconds=1)
    seconds, rest = divmod(micros, 1_000_000)
    return f"{seconds}.{rest:06d}".rstrip("0").rstrip(".") + "s"


def socket_address(address: str, port: int) -> JSON:
    return {"socket_address": {"address": address, "port_value": port}}


def listener_filter(short: str, message: str) -> JSON:
    """``listener_filter("original_dst", "OriginalDst")``."""
    return {"name": f"envoy.filters.listener.{short}",
            "typed_config": {"@type": f"{TYPE}envoy.extensions.filters.listener.{short}.v3.{message}"}}


def tcp_proxy(cluster: str, stat_prefix: str | None = None) -> JSON:
    return {"name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": stat_prefix or cluster, "cluster": cluster}}


def http_connection_manager(stat_prefix: str, *, route_config: JSON | None = None, rds_name: str = "",
                            forward_client_cert: bool = False) -> JSON:
    """An HCM with the router filter; routes inline (``route_config``) or from RDS over ADS.

    ``forward_client_cert`` (Istio's inbound sidecar): the peer's identity reaches the application in
    ``x-forwarded-client-cert`` (``By=<own SPIFFE ID>;Hash=...;URI=<peer SPIFFE ID>``), appended to
    what a mesh client forwarded.
    """
    config: JSON = {"@type": HCM, "stat_prefix": stat_prefix, "codec_type": "AUTO"}
    if forward_client_cert:
        config["forward_client_cert_details"] = "APPEND_FORWARD"
        config["set_current_client_cert_details"] = {"subject": True, "dns": True, "uri": True}
    if route_config is not None:
        config["route_config"] = route_config
    else:
        config["rds"] = {"config_source": {"ads": {}, "resource_api_version": "V3"}, "route_config_name": rds_name}
    config["http_filters"] = [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    config["use_remote_address"] = False
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}


def sds_secret(name: str, *, sds: bool) -> JSON:
    """A reference to a secret: from the agent's SDS server, or (``sds=False``) a static secret."""
    if not sds:
        return {"name": name}
    return {"name": name, "sds_config": {
        "api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                              "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
                              "set_node_on_first_message_only": True},
        "initial_fetch_timeout": "0s", "resource_api_version": "V3"}}


def common_tls(alpn: list[str], *, sds: bool, sans: list[str] | None = None) -> JSON:
    """Istio's workload certificate (``default``) and trust bundle (``ROOTCA``), optionally pinning SANs."""
    default_validation: JSON = {}
    if sans:
        default_validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": san}} for san in sans]
    return {"alpn_protocols": alpn,
            "tls_certificate_sds_secret_configs": [sds_secret(SECRET_CERT, sds=sds)],
            "combined_validation_context": {"default_validation_context": default_validation,
                                            "validation_context_sds_secret_config": sds_secret(SECRET_ROOT, sds=sds)}}


def upstream_tls(sni: str, alpn: list[str], *, sds: bool, sans: list[str]) -> JSON:
    return {"name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": UPSTREAM_TLS, "sni": sni,
                             "common_tls_context": common_tls(alpn, sds=sds, sans=sans)}}


def downstream_tls(alpn: list[str], *, sds: bool) -> JSON:
    return {"name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": DOWNSTREAM_TLS, "require_client_certificate": True,
                             "common_tls_context": common_tls(alpn, sds=sds)}}


def raw_buffer() -> JSON:
    return {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": RAW_BUFFER}}


def http2_options() -> JSON:
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}}


def original_dst_cluster(name: str, *, bind: str = "") -> JSON:
    cluster: JSON = {"name": name, "type": "ORIGINAL_DST", "connect_timeout": "10s", "lb_policy": "CLUSTER_PROVIDED"}
    if bind:
        cluster["upstream_bind_config"] = {"source_address": {"address": bind, "port_value": 0}}
    return cluster
