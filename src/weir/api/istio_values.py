"""Istio's rules for the values its config kinds share: hosts, names, durations, ports, exportTo.

The checks follow Istio's own validation (``pkg/config/validation``): each returns ``None`` for
a valid value or a message saying what is wrong, so parsers and schema tables
(:class:`~weir.api.kube_schema.Checked`) attach it to a JSON path. Where Istio's rule differs
from Kubernetes' (Istio's DNS labels allow upper case), Istio's is used for Istio fields.
"""

from __future__ import annotations

import datetime
import http
import ipaddress
import re
from fractions import Fraction
from typing import Literal

from weir.api.errors import quoted

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Protocol = Literal["HTTP", "HTTPS", "GRPC", "GRPC-Web", "HTTP2", "HTTP_PROXY", "TCP", "TLS", "UDP",
                   "Mongo", "Redis", "MySQL"]
PROTOCOLS: dict[str, Protocol] = {
    p.lower(): p for p in ("HTTP", "HTTPS", "GRPC", "GRPC-Web", "HTTP2", "HTTP_PROXY", "TCP", "TLS", "UDP",
                           "Mongo", "Redis", "MySQL")
}
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-Web"})
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})
MESH_GATEWAY = "mesh"
UNIX_PREFIX = "unix://"

_LABEL = re.compile(r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")
_WILDCARD_LABEL = re.compile(r"\*|(?:\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")
_LABEL_MAX = 63
_DOMAIN_MAX = 255
# Go's units; microseconds also as U+00B5 (micro sign) and U+03BC (Greek mu), as Go accepts.
_NANOS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000, "s": 10**9,
          "m": 60 * 10**9, "h": 3600 * 10**9}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(" + "|".join(sorted(_NANOS, key=len, reverse=True)) + ")")
_MILLI = 1_000_000
_REGEX_MAX = 1024
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~A-Za-z0-9]+")
_PSEUDO_HEADERS = frozenset({":method", ":scheme", ":authority", ":path", ":status"})
JWT_CLAIM_PREFIX = "@request.auth.claims"

GRPC_STATUSES = frozenset({
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
})
CORS_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"})

# Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on policies, as Istio accepts them.
RETRY_ON_POLICIES = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx", "refused-stream",
    "retriable-status-codes", "retriable-headers", "envoy-ratelimited", "http3-post-connect-failure",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})


# --- names and hosts -----------------------------------------------------------------------


def label(value: str) -> str | None:
    """Istio's DNS-1123 label: like Kubernetes' but upper case is allowed (subset, port names)."""
    if len(value) > _LABEL_MAX or not _LABEL.fullmatch(value):
        return ("must be a DNS-1123 label: alphanumeric characters or '-', starting and ending with an "
                f"alphanumeric character, at most {_LABEL_MAX} characters")
    return None


def _domain_labels(domain: str) -> str | None:
    parts = domain.split(".")
    if parts[-1].isdigit():
        return f"top level domain {quoted(parts[-1])} cannot be all-numeric"
    for index, part in enumerate(parts):
        if index == len(parts) - 1 and part == "":
            return None  # a trailing dot: "istio.io."
        if len(part) > _LABEL_MAX or not _LABEL.fullmatch(part):
            return f"label {quoted(part)} is not a DNS-1123 label"
    return None


def _preconditions(domain: str) -> str | None:
    if not domain:
        return "must not be empty"
    if len(domain) > _DOMAIN_MAX:
        return f"must be no more than {_DOMAIN_MAX} characters"
    return None


def fqdn(domain: str) -> str | None:
    """A domain name (short names like ``reviews`` included), no wildcard."""
    return _preconditions(domain) or _domain_labels(domain)


def wildcard_domain(domain: str) -> str | None:
    """A domain name whose first label may be a wildcard: ``*``, ``*.example.com``, ``reviews``."""
    problem = _preconditions(domain)
    if problem:
        return problem
    first, dot, rest = domain.partition(".")
    if len(first) > _LABEL_MAX or not _WILDCARD_LABEL.fullmatch(first):
        return f"label {quoted(first)} is not a DNS-1123 label (a wildcard '*' is allowed only as the first label)"
    return _domain_labels(rest) if dot else None


def host_matches(a: str, b: str) -> bool:
    """Istio's ``host.Name.Matches``: equal, or one wildcard host covers the other."""
    if a.startswith("*") and b.startswith("*"):
        return b[1:].endswith(a[1:]) if len(a) < len(b) else a[1:].endswith(b[1:])
    if a.startswith("*"):
        return b.endswith(a[1:])
    if b.startswith("*"):
        return a.endswith(b[1:])
    return a == b


def host_subset_of(a: str, b: str) -> bool:
    """Istio's ``host.Name.SubsetOf``: every name ``a`` matches is matched by ``b``."""
    if a.startswith("*"):
        return b.startswith("*") and a[1:].endswith(b[1:])
    if b.startswith("*"):
        return a.endswith(b[1:])
    return a == b


def ip(value: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def ip_or_cidr(value: str) -> IPNetwork | None:
    """An address or a CIDR block (``10.0.0.1``, ``192.192.192.192/24``) as a network, else ``None``.

    Host bits may be set in a block, as Istio allows (``192.192.192.192/24`` is 192.192.192.0/24).
    """
    try:
        return ipaddress.ip_network(value, strict=False) if value.count("/") <= 1 else None
    except ValueError:
        return None


def gateway_name(value: str) -> str | None:
    """``mesh``, ``<namespace>/<name>`` (both DNS-1123 labels), or a legacy (FQDN) gateway name."""
    namespace, slash, name = value.partition("/")
    if not slash:
        return fqdn(value)
    if not namespace or not name:
        return "namespace and gateway name must not be empty"
    if label(namespace):
        return f"invalid namespace {quoted(namespace)}: {label(namespace)}"
    if label(name):
        return f"invalid gateway name {quoted(name)}: {label(name)}"
    return None


def port_number(value: object) -> str | None:
    if isinstance(value, int) and not 1 <= value <= 65535:
        return f"must be between 1 and 65535, inclusive, got {value}"
    return None


def percentage(value: object) -> str | None:
    if isinstance(value, int | float) and not 0 <= value <= 100:
        return f"must be between 0 and 100, inclusive, got {value}"
    return None


def non_negative(value: object) -> str | None:
    if isinstance(value, int | float) and value < 0:
        return f"must not be negative, got {value}"
    return None


def protocol(value: str) -> Protocol | None:
    """Istio's protocol names, any case (``HTTP``, ``grpc``, ``TLS`` ...), in Istio's spelling."""
    return PROTOCOLS.get(value.lower())


def header_name(name: str) -> str | None:
    """A header to match on: an HTTP token, a pseudo-header (``:authority``) or a JWT claim."""
    if not name:
        return "header name must not be empty"
    if name.startswith(JWT_CLAIM_PREFIX) or name in _PSEUDO_HEADERS or _HEADER_NAME.fullmatch(name):
        return None
    return f"{quoted(name)} is not a valid header name"


def retry_on(policy: str) -> str | None:
    """One comma-separated ``retryOn`` entry: an Envoy retry policy or an HTTP status code."""
    if policy in RETRY_ON_POLICIES:
        return None
    if policy.isdigit():
        try:
            http.HTTPStatus(int(policy))
        except ValueError:
            pass
        else:
            return None
    return (f"{quoted(policy)} is not a valid retryOn policy (an HTTP status code or one of "
            f"{', '.join(sorted(RETRY_ON_POLICIES))})")


# --- durations and regular expressions -----------------------------------------------------


def parse_duration(text: str) -> int | None:
    """Go's ``time.ParseDuration`` (``"3s"``, ``"0.5s"``, ``"1m30s"``, ``"250ms"``) in nanoseconds."""
    sign, body = (-1, text[1:]) if text[:1] == "-" else (1, text[1:] if text[:1] == "+" else text)
    if body == "0":
        return 0
    if not body:
        return None
    total = Fraction(0)
    position = 0
    while position < len(body):
        part = _DURATION_PART.match(body, position)
        if part is None:
            return None
        total += Fraction(part.group(1)) * _NANOS[part.group(2)]
        position = part.end()
    return sign * int(total)


def duration_problem(value: object, *, allow_zero: bool = False) -> str | None:
    """Istio's ``ValidateDuration``: a duration string of at least 1ms, to millisecond precision."""
    if not isinstance(value, str):
        return None
    nanos = parse_duration(value)
    if nanos is None:
        return f'invalid duration {quoted(value)} (e.g. "3s", "0.5s", "1m", "250ms")'
    if allow_zero and nanos == 0:
        return None
    if nanos < _MILLI:
        return f"duration {quoted(value)} must be at least 1ms"
    if nanos % _MILLI:
        return f"duration {quoted(value)} is more precise than a millisecond"
    return None


def duration(value: object) -> datetime.timedelta | None:
    """A valid duration string (see :func:`duration_problem`) as a ``timedelta``, else ``None``."""
    if not isinstance(value, str) or duration_problem(value, allow_zero=True):
        return None
    nanos = parse_duration(value)
    return None if nanos is None else datetime.timedelta(milliseconds=nanos // _MILLI)


def regex_problem(pattern: str) -> str | None:
    """An RE2 pattern, as Envoy takes it: checked with Python's ``re`` and RE2's omissions."""
    if not pattern:
        return "regex must not be empty"
    if len(pattern) > _REGEX_MAX:
        return f"regex is too large, max length allowed is {_REGEX_MAX}"
    unsupported = _re2_unsupported(pattern)
    if unsupported:
        return f"{unsupported} are not supported (Istio uses RE2 syntax: https://github.com/google/re2/wiki/Syntax)"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"invalid regex: {exc}"
    return None


def _re2_unsupported(pattern: str) -> str | None:
    index = 0
    while index < len(pattern):
        if pattern[index] == "\\" and index + 1 < len(pattern):
            if pattern[index + 1] in "123456789":
                return "backreferences"
            index += 2
            continue
        if pattern.startswith(("(?=", "(?!", "(?<=", "(?<!"), index):
            return "lookaround assertions"
        if pattern.startswith("(?P=", index):
            return "backreferences"
        if pattern.startswith("(?>", index):
            return "atomic groups"
        index += 1
    return None


# --- exportTo ------------------------------------------------------------------------------


def export_to(entries: tuple[str, ...], namespace: str, *, service_entry: bool = False) -> list[tuple[int, str]]:
    """Istio's ``exportTo`` rules: ``(index, problem)`` for each bad entry (``index`` -1: the list).

    Entries are ``.`` (this namespace), ``*`` (all), a namespace name, and for a ServiceEntry
    ``~`` (no one); no duplicates, and ``*`` or ``~`` must stand alone.
    """
    found: list[tuple[int, str]] = []
    seen: dict[str, str] = {}  # namespace ("." resolved) -> the entry that named it
    for index, entry in enumerate(entries):
        key = namespace if entry == "." else entry
        if key in seen:
            found.append((index, f"duplicate entry {quoted(entry)}" if seen[key] == entry
                          else f"duplicate entry: '.' and the namespace {quoted(namespace)}"))
            continue
        if entry == "~" and not service_entry:
            found.append((index, "'~' (export to no one) is allowed only in a ServiceEntry"))
        elif entry not in (".", "*", "~") and label(entry):
            found.append((index, f"invalid entry {quoted(entry)}: must be '.', '*' or a namespace name"))
        seen[key] = entry
    if "*" in seen and len(entries) > 1:
        found.append((-1, "cannot have both public (*) and non-public exportTo values"))
    if "~" in seen and len(entries) > 1:
        found.append((-1, "cannot export to no one (~) and someone"))
    return found
