"""The name table a sidecar's DNS proxy gets (istiod's ``BuildNameTable``), as a pure function.

:func:`name_table` turns the registry's :class:`~weir.control.registry.DnsTable` into the
JSON form of Istio's ``istio.networking.nds.v1.NameTable`` (:mod:`weir.platform.nds`), which
:mod:`weir.control.xds_convert` packs and the ADS server pushes as NDS. One entry per fully
qualified host, as Istio writes it:

- a Kubernetes Service: its ClusterIP (a headless one: its ready pods' addresses), registry
  ``Kubernetes``, and ``shortname``/``namespace``, from which the agent makes the short names
  ``svc.ns.svc``, ``svc.ns`` and, in its own namespace, ``svc`` (as Istio, the control plane
  does not spell them out: only the agent knows its namespace and search domains);
- a ServiceEntry host: its address (given, or auto-allocated from ``240.240.0.0/16``), registry
  ``External``, no short names;
- an ``ExternalName`` Service: no addresses and weir's ``cname`` field, the alias's target.

The registry decides which names resolve and to what (``Registry.dns``); this module only adds
what the message says about each host. A name is in the table once: a Service wins over a
ServiceEntry for the same host, as in the registry. Hosts without an address (a ServiceEntry
with a CIDR or a wildcard, a headless Service with no pods) are left out, as Istio does. No
visibility filter yet: every proxy gets every host (no ``exportTo``/``Sidecar`` in the registry).
Deterministic: hosts sorted, so the same registry gives the same table. No I/O.
"""

from __future__ import annotations

from typing import Any

from weir.control.registry import MeshService, Registry
from weir.platform.nds import REGISTRY_EXTERNAL, REGISTRY_KUBERNETES

JSON = dict[str, Any]


def name_table(registry: Registry) -> JSON:
    """``{"table": {fqdn: NameInfo as JSON}}`` for every name the registry's DNS table holds."""
    by_host = {s.hostname: s for s in registry.services}
    table: dict[str, JSON] = {}
    for host, addresses in registry.dns.addresses.items():
        table[host] = {"ips": list(addresses), **_attributes(by_host.get(host))}
    for host, target in registry.dns.aliases.items():
        table.setdefault(host, {**_attributes(by_host.get(host)), "cname": target})
    return {"table": dict(sorted(table.items()))}


def _attributes(service: MeshService | None) -> JSON:
    """``registry``, and for a Kubernetes Service its name and namespace (the agent's short names)."""
    if service is None:
        return {}
    if service.kind == "Service":
        return {"registry": REGISTRY_KUBERNETES, "shortname": service.name, "namespace": service.namespace}
    return {"registry": REGISTRY_EXTERNAL}
