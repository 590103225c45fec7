"""Kubernetes name rules (apimachinery ``validation``), as checks that return the problem.

Each function returns ``None`` for a valid value, else a message that names the rule, so the
caller can attach it to a JSON path.
"""

from __future__ import annotations

import re

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
QUALIFIED_NAME_MAX = 63
LABEL_VALUE_MAX = 63
PORT_NAME_MAX = 15
ANNOTATIONS_MAX_BYTES = 256 * 1024

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_PORT_NAME = re.compile(r"[-a-z0-9]+")


def dns1123_label(value: str) -> str | None:
    if len(value) > DNS1123_LABEL_MAX:
        return f"must be no more than {DNS1123_LABEL_MAX} characters"
    if not _DNS1123_LABEL.fullmatch(value):
        return ("must be a lowercase RFC 1123 label: lower case alphanumeric characters or '-', "
                "starting and ending with an alphanumeric character (e.g. 'my-name')")
    return None


def dns1035_label(value: str) -> str | None:
    """A Service name: a DNS-1123 label that starts with a letter."""
    if len(value) > DNS1123_LABEL_MAX:
        return f"must be no more than {DNS1123_LABEL_MAX} characters"
    if not _DNS1035_LABEL.fullmatch(value):
        return ("must be a lowercase RFC 1035 label: lower case alphanumeric characters or '-', "
                "starting with a letter and ending with an alphanumeric character (e.g. 'my-name')")
    return None


def dns1123_subdomain(value: str) -> str | None:
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        return f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        return ("must be a lowercase RFC 1123 subdomain: lower case alphanumeric characters, '-' or '.', "
                "starting and ending with an alphanumeric character (e.g. 'example.com')")
    return None


def generate_name_prefix(value: str) -> str | None:
    """``metadata.generateName``: a subdomain once a random suffix follows its trailing '-'."""
    masked = value[:-1] + "a" if len(value) > 1 and value.endswith("-") else value
    return dns1123_subdomain(masked)


def qualified_name(value: str) -> str | None:
    """A label or annotation key: ``[prefix/]name``, the prefix a DNS-1123 subdomain."""
    prefix, slash, name = value.rpartition("/")
    if slash:
        if not prefix:
            return "prefix part must be non-empty"
        problem = dns1123_subdomain(prefix)
        if problem is not None:
            return f"prefix part {problem}"
    if not name:
        return "name part must be non-empty"
    if len(name) > QUALIFIED_NAME_MAX:
        return f"name part must be no more than {QUALIFIED_NAME_MAX} characters"
    if not _QUALIFIED_NAME.fullmatch(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character (e.g. 'MyName', 'my.name', '123-abc')")
    return None


def label_value(value: str) -> str | None:
    if len(value) > LABEL_VALUE_MAX:
        return f"must be no more than {LABEL_VALUE_MAX} characters"
    if value and not _QUALIFIED_NAME.fullmatch(value):
        return ("must be empty or consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character")
    return None


def port_name(value: str) -> str | None:
    """An IANA service name, as Kubernetes requires of ``ports[].name``."""
    if len(value) > PORT_NAME_MAX:
        return f"must be no more than {PORT_NAME_MAX} characters"
    if not _PORT_NAME.fullmatch(value):
        return "must contain only lower case alphanumeric characters or '-'"
    if not re.search(r"[a-z]", value):
        return "must contain at least one letter"
    if "--" in value:
        return "must not contain consecutive hyphens"
    if value.startswith("-") or value.endswith("-"):
        return "must not begin or end with a hyphen"
    return None


def env_var_name(value: str) -> str | None:
    """Kubernetes' relaxed rule: printable ASCII other than '='."""
    if not value:
        return "must not be empty"
    if any(not " " <= c <= "~" or c == "=" for c in value):
        return "must consist only of printable ASCII characters other than '='"
    return None
