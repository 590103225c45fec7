"""Istio ``security.istio.io`` PeerAuthentication: the model and ``parse_peer_authentication``.

A PeerAuthentication says which mTLS mode a workload's sidecar accepts: for the whole mesh (in
the root namespace, no selector), a namespace (no selector) or the workloads its selector
matches, optionally per port. Rules follow Istio's ``ValidatePeerAuthentication``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from weir.api import istio_parse as ip
from weir.api import istio_schema as isc
from weir.api import kube_schema as ks
from weir.api import read as rd
from weir.api.errors import Problems, field_path, show
from weir.api.meta import Header, ObjectMeta, open_manifest, parse_metadata

MTLSMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]

PEER_AUTHENTICATION = Header("PeerAuthentication", isc.SECURITY_VERSIONS, isc.PEER_AUTHENTICATION)

_MODES: dict[str, MTLSMode] = {"UNSET": "UNSET", "DISABLE": "DISABLE", "PERMISSIVE": "PERMISSIVE", "STRICT": "STRICT"}


def _no_ports() -> Mapping[int, MTLSMode]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class PeerAuthenticationSpec:
    selector: Mapping[str, str] | None = None
    """``matchLabels``; ``None``: the policy covers the namespace (the mesh, in the root namespace)."""
    mtls_mode: MTLSMode = "UNSET"
    """``UNSET`` inherits from the parent scope (namespace, then mesh; PERMISSIVE at the top)."""
    port_level_mtls: Mapping[int, MTLSMode] = field(default_factory=_no_ports)


@dataclass(frozen=True, kw_only=True)
class PeerAuthentication:
    metadata: ObjectMeta
    spec: PeerAuthenticationSpec
    api_version: str = "security.istio.io/v1"
    kind: str = "PeerAuthentication"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def parse_peer_authentication(doc: object, source: str = "<peerauthentication>") -> PeerAuthentication:
    """Check and build a PeerAuthentication. Raises :class:`~weir.api.errors.ManifestError` listing every problem.

    ``spec`` may be absent or empty: such a policy sets nothing (mode ``UNSET``).
    """
    problems, doc = open_manifest(doc, source, PEER_AUTHENTICATION)
    metadata = parse_metadata(doc, problems, PEER_AUTHENTICATION)
    spec = rd.mapping(doc, "spec")
    selector = ip.selector(spec, "selector", "spec", problems)
    mode = _MODES.get(rd.string(rd.mapping(spec, "mtls"), "mode"), "UNSET")
    port_level = _port_level_mtls(spec, selector, problems)
    problems.raise_if_any()
    return PeerAuthentication(
        metadata=metadata,
        spec=PeerAuthenticationSpec(selector=selector, mtls_mode=mode, port_level_mtls=MappingProxyType(port_level)),
        api_version=rd.string(doc, "apiVersion"),
        raw=copy.deepcopy(doc),
    )


def _port_level_mtls(spec: rd.Doc, selector: Mapping[str, str] | None, problems: Problems) -> dict[int, MTLSMode]:
    """``portLevelMtls``: port number -> MutualTLS. Keys are ints in YAML and strings in JSON."""
    path = "spec.portLevelMtls"
    value = spec.get("portLevelMtls")
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping (port number -> MutualTLS), got {show(value)}")
        return {}
    if not value:
        problems.add(path, "must have at least one port when set")
    elif not selector:
        problems.add(path, "needs spec.selector.matchLabels: a namespace- or mesh-wide policy cannot set "
                           "port-level mTLS")
    found: dict[int, MTLSMode] = {}
    for key, item in value.items():
        kpath = field_path(path, str(key))
        port = _port(key)
        if port is None:
            problems.add(kpath, f"keys must be port numbers, got {show(key)}")
            continue
        if not 1 <= port <= 65535:
            problems.add(kpath, f"port must be between 1 and 65535, inclusive, got {port}")
            continue
        if port in found:
            problems.add(kpath, f"duplicate port {port}")
        if item is None:
            problems.add(kpath, "expected a value, got null")
            continue
        ks.check(item, isc.MUTUAL_TLS, kpath, problems)
        found[port] = _MODES.get(rd.string(item if isinstance(item, dict) else {}, "mode"), "UNSET")
    return found


def _port(key: object) -> int | None:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.isascii() and key.isdigit():
        return int(key)
    return None
