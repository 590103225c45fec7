"""A container's ``startupProbe``, ``readinessProbe`` and ``livenessProbe`` -> :class:`Probe`.

Kubernetes' own rules (``validateProbe`` and ``SetDefaults_Probe``): exactly one handler, no
negative numbers (``0`` means the default), ``successThreshold`` 1 for liveness and startup,
no ``terminationGracePeriodSeconds`` on readiness, and no probes on init containers other than
native sidecars. The embedded runtime adds what kubelet would only find out when it probes: a
named port must be one of the container's ``ports``, and ``host`` must be an IP address (or
``localhost``), because the pod's supervisor probes without blocking and so resolves no names.
The schema pass (:mod:`weir.api.kube_schema`) has checked field names and JSON types already.
"""

from __future__ import annotations

import ipaddress
import re

from weir.api import kube_schema as ks
from weir.api import names
from weir.api.errors import Problems, field_path, quoted
from weir.api.pod_model import (
    DEFAULT_PROBE_FAILURE_THRESHOLD,
    DEFAULT_PROBE_PERIOD_SECONDS,
    DEFAULT_PROBE_SUCCESS_THRESHOLD,
    DEFAULT_PROBE_TIMEOUT_SECONDS,
    ContainerPort,
    ExecAction,
    GRPCAction,
    HTTPGetAction,
    HTTPHeader,
    Probe,
    ProbeHandler,
    ProbeKind,
    Scheme,
    TCPSocketAction,
)
from weir.api.read import Doc
from weir.api.read import absent as _absent
from weir.api.read import integer as _int
from weir.api.read import invalid as _invalid
from weir.api.read import mapping as _obj
from weir.api.read import mappings as _objs
from weir.api.read import present as _present
from weir.api.read import string as _str
from weir.api.read import strings as _strs

PROBE_FIELDS: tuple[tuple[str, ProbeKind], ...] = (
    ("startupProbe", "startup"), ("readinessProbe", "readiness"), ("livenessProbe", "liveness"),
)
HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")
NOT_ON_INIT = "may not be set for init containers without restartPolicy=Always"
NO_NAMES = 'must be an IP address or "localhost" (the embedded runtime resolves no names for probes)'

_SCHEMES: dict[str, Scheme] = {"HTTP": "HTTP", "HTTPS": "HTTPS"}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_DEFAULTS = (  # (field, default when unset or 0)
    ("periodSeconds", DEFAULT_PROBE_PERIOD_SECONDS), ("timeoutSeconds", DEFAULT_PROBE_TIMEOUT_SECONDS),
    ("successThreshold", DEFAULT_PROBE_SUCCESS_THRESHOLD), ("failureThreshold", DEFAULT_PROBE_FAILURE_THRESHOLD),
)


def container_probes(doc: Doc, path: str, problems: Problems, *, init: bool, sidecar: bool,
                     ports: tuple[ContainerPort, ...]) -> dict[ProbeKind, Probe | None]:
    """The three probes of the container ``doc`` at ``path`` (``None`` where unset or invalid)."""
    out: dict[ProbeKind, Probe | None] = {}
    for key, kind in PROBE_FIELDS:
        out[kind] = None
        if not _present(doc, key):
            continue
        if init and not sidecar:
            problems.add(f"{path}.{key}", NOT_ON_INIT)
            continue
        out[kind] = _probe(_obj(doc, key), f"{path}.{key}", kind, ports, problems)
    return out


def _probe(doc: Doc, path: str, kind: ProbeKind, ports: tuple[ContainerPort, ...],
           problems: Problems) -> Probe | None:
    given = [key for key in HANDLERS if _present(doc, key)]
    if not given:
        if all(key in ks.PROBE.fields for key in doc):  # an unknown field was reported by the schema pass
            problems.add(path, f"must specify a handler type (one of {', '.join(HANDLERS)})")
        return None
    if len(given) > 1:
        problems.add(path, f"may not specify more than 1 handler type (got {', '.join(given)})")
        return None
    counts: dict[str, int] = {}
    for key, default in (("initialDelaySeconds", 0), *_DEFAULTS):
        value = _int(doc, key)
        if value is not None and value < 0:
            problems.add(f"{path}.{key}", f"must be greater than or equal to 0, got {value}")
            value = None
        counts[key] = value or default
    if kind != "readiness" and counts["successThreshold"] != 1:
        problems.add(f"{path}.successThreshold", f"must be 1 for a {kind} probe, got {counts['successThreshold']}")
    grace = _int(doc, "terminationGracePeriodSeconds")
    if grace is not None:
        if kind == "readiness":
            problems.add(f"{path}.terminationGracePeriodSeconds", "must not be set for readiness probes")
            grace = None
        elif grace < 1:
            problems.add(f"{path}.terminationGracePeriodSeconds", f"must be greater than 0, got {grace}")
            grace = None
    handler = _handler(given[0], _obj(doc, given[0]), field_path(path, given[0]), ports, problems)
    if handler is None:
        return None
    return Probe(handler=handler, initial_delay_seconds=counts["initialDelaySeconds"],
                 period_seconds=counts["periodSeconds"], timeout_seconds=counts["timeoutSeconds"],
                 success_threshold=counts["successThreshold"], failure_threshold=counts["failureThreshold"],
                 termination_grace_period_seconds=grace)


def _handler(key: str, doc: Doc, path: str, ports: tuple[ContainerPort, ...],
             problems: Problems) -> ProbeHandler | None:
    if key == "exec":
        command = _strs(doc, "command")
        if _absent(doc, "command"):
            problems.missing(f"{path}.command")
            return None
        if not command:
            return None  # not strings: the schema pass said so
        if not command[0]:
            problems.add(f"{path}.command[0]", "must not be empty (it names the program to run)")
            return None
        return ExecAction(command)
    if key == "grpc":
        number = _int(doc, "port")
        if number is None:
            problems.missing(f"{path}.port")
            return None
        if not 1 <= number <= 65535:
            problems.add(f"{path}.port", f"must be between 1 and 65535, inclusive, got {number}")
            return None
        return GRPCAction(port=number, service=_str(doc, "service"))
    port = _port(doc, path, ports, problems)
    host = _host(doc, path, problems)
    if key == "tcpSocket":
        return None if port is None or host is None else TCPSocketAction(port=port, host=host)
    request_path = _request_path(doc, path, problems)
    headers = _headers(doc, path, problems)
    if port is None or host is None or request_path is None or headers is None:
        return None
    return HTTPGetAction(port=port, path=request_path, host=host, scheme=_SCHEMES.get(_str(doc, "scheme"), "HTTP"),
                         http_headers=headers)


def _port(doc: Doc, path: str, ports: tuple[ContainerPort, ...], problems: Problems) -> int | str | None:
    value = doc.get("port")
    where = f"{path}.port"
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= 65535:
            return value
        problems.add(where, f"must be between 1 and 65535, inclusive, got {value}")
        return None
    if not isinstance(value, str) or not value:
        if _absent(doc, "port"):
            problems.missing(where, "required (a port number or the name of one of the container's ports)")
        return None
    problem = names.port_name(value)
    if problem:
        _invalid(problems, where, value, problem)
        return None
    if not any(p.name == value for p in ports):
        known = ", ".join(quoted(p.name) for p in ports if p.name) or "none"
        problems.add(where, f"no port named {quoted(value)} in this container's ports (named ports: {known})")
        return None
    return value


def _host(doc: Doc, path: str, problems: Problems) -> str | None:
    host = _str(doc, "host")
    if not host or host == "localhost":
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        _invalid(problems, f"{path}.host", host, NO_NAMES)
        return None
    return host


def _request_path(doc: Doc, path: str, problems: Problems) -> str | None:
    value = _str(doc, "path")
    if any(c <= " " or c == "\x7f" for c in value):
        _invalid(problems, f"{path}.path", value, "must not contain spaces or control characters (percent-encode "
                                                  "them)")
        return None
    return value if value.startswith("/") else f"/{value}"  # kubelet puts it after host:port


def _headers(doc: Doc, path: str, problems: Problems) -> tuple[HTTPHeader, ...] | None:
    headers: list[HTTPHeader] = []
    ok = True
    for hpath, header in _objs(doc, "httpHeaders", path):
        name, value = _str(header, "name"), _str(header, "value")
        if not name:
            if _absent(header, "name"):
                problems.missing(f"{hpath}.name")
            ok = False
        elif not _HEADER_NAME.fullmatch(name):
            _invalid(problems, f"{hpath}.name", name, "must be a valid HTTP header name (letters, digits and "
                                                      "!#$%&'*+-.^_`|~)")
            ok = False
        if any(c in "\r\n\0" for c in value):
            problems.add(f"{hpath}.value", "must not contain line breaks or NUL")
            ok = False
        headers.append(HTTPHeader(name, value))
    return tuple(headers) if ok else None
