"""Builders that Istio's kinds share: the spec, destinations, hosts, selectors and ``exportTo``.

Used by :mod:`weir.api.networking_parse`, :mod:`weir.api.virtual_service_parse` and
:mod:`weir.api.security`. Like every builder, they read what the schema pass accepted and add
meaning problems (Istio's rules, from :mod:`weir.api.istio_values`) to the same collector.
"""

from __future__ import annotations

from types import MappingProxyType

from weir.api import istio_values as iv
from weir.api import read as rd
from weir.api.errors import Problems, field_path, item_path
from weir.api.meta import check_labels
from weir.api.networking_model import Destination

Doc = rd.Doc


def spec(doc: Doc, problems: Problems, needs: str) -> Doc:
    """``spec``, required: ``needs`` says what for (``"spec.hosts"``)."""
    if not rd.present(doc, "spec"):
        problems.missing("spec", f"required (the resource needs {needs})")
    return rd.mapping(doc, "spec")


def check_host(host: str, path: str, problems: Problems, *, what: str = "host") -> bool:
    """A host: a (wildcard) DNS name but not ``*`` alone. Reports and returns False when bad."""
    if host == "*":
        problems.add(path, f'invalid {what} "*" (it would match every host)')
        return False
    problem = iv.wildcard_domain(host)
    if problem:
        rd.invalid(problems, path, host, problem)
        return False
    return True


def destination(doc: Doc, path: str, problems: Problems) -> Destination:
    """A ``destination``: ``host`` (required), ``subset``, ``port.number``."""
    host = rd.string(doc, "host")
    if not host:
        if rd.absent(doc, "host"):
            problems.missing(f"{path}.host", "required (the service to send traffic to)")
    else:
        check_host(host, f"{path}.host", problems, what="destination host")
    subset = rd.string(doc, "subset")
    if subset:
        problem = iv.label(subset)
        if problem:
            rd.invalid(problems, f"{path}.subset", subset, problem)
    port = rd.mapping(doc, "port")
    number = rd.integer(port, "number")
    if rd.present(doc, "port") and number is None and rd.absent(port, "number"):
        problems.missing(f"{path}.port.number", "required (the service port)")
    return Destination(host=host, subset=subset, port=number if number is not None and 1 <= number <= 65535 else None)


def selector(doc: Doc, key: str, path: str, problems: Problems, *, labels_key: str = "matchLabels",
             ) -> MappingProxyType[str, str] | None:
    """A workload selector's labels (``None`` when no selector is given)."""
    if not rd.present(doc, key):
        return None
    labels = rd.string_map(rd.mapping(doc, key), labels_key)
    check_labels(labels, f"{field_path(path, key)}.{labels_key}", problems)
    return MappingProxyType(labels)


def labels(doc: Doc, key: str, path: str, problems: Problems) -> MappingProxyType[str, str]:
    found = rd.string_map(doc, key)
    check_labels(found, field_path(path, key), problems)
    return MappingProxyType(found)


def export_to(spec_doc: Doc, namespace: str, problems: Problems, *, service_entry: bool = False) -> tuple[str, ...]:
    entries = rd.strings(spec_doc, "exportTo")
    for index, problem in iv.export_to(entries, namespace, service_entry=service_entry):
        problems.add("spec.exportTo" if index < 0 else item_path("spec.exportTo", index), problem)
    return entries


def gateways(doc: Doc, path: str, problems: Problems) -> tuple[str, ...]:
    found = rd.strings(doc, "gateways")
    for index, name in enumerate(found):
        problem = None if name == iv.MESH_GATEWAY else iv.gateway_name(name)
        if problem:
            rd.invalid(problems, item_path(field_path(path, "gateways"), index), name, problem)
    return found


def subnets(doc: Doc, key: str, path: str, problems: Problems) -> tuple[iv.IPNetwork, ...]:
    found: list[iv.IPNetwork] = []
    for index, value in enumerate(rd.strings(doc, key)):
        network = iv.ip_or_cidr(value)
        if network is None:
            rd.invalid(problems, item_path(field_path(path, key), index), value,
                       "must be an IP address or a CIDR block")
        else:
            found.append(network)
    return tuple(found)


def source_namespace(doc: Doc, path: str, problems: Problems) -> str:
    value = rd.string(doc, "sourceNamespace")
    if value and iv.label(value):
        rd.invalid(problems, f"{path}.sourceNamespace", value, iv.label(value) or "")
    return value


def weights(entries: list[tuple[str, Doc]], path: str, problems: Problems) -> list[int]:
    """The ``weight`` of each route destination, relative to the others (current Istio).

    A lone destination takes all traffic (weight 100 whatever is written). With several, each
    weight must be a whole number >= 0 and they must not all be 0; traffic splits in proportion
    (Istio once required a total of 100; it no longer does).
    """
    given = [rd.integer(entry, "weight") for _, entry in entries]
    checked = all(rd.absent(entry, "weight") or weight is not None
                  for (_, entry), weight in zip(entries, given, strict=True))
    for (epath, _), weight in zip(entries, given, strict=True):
        if weight is not None and weight < 0:  # refused even on a lone destination, as Istio does
            problems.add(f"{epath}.weight", f"must not be negative, got {weight}")
            checked = False
    if len(entries) == 1:
        return [100]
    total = sum(w for w in given if w is not None)
    if entries and checked and total == 0:
        problems.add(path, "the destinations' weights add up to 0: no destination would get traffic")
    return [w or 0 for w in given]

