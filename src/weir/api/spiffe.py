"""SPIFFE identities as Istio shapes them: ``spiffe://<trust-domain>/ns/<namespace>/sa/<account>``.

A workload's identity is its Kubernetes service account, qualified by namespace and by the
mesh's trust domain (Istio's ``pkg/spiffe``). Both sides of the mesh's certificates use this
one type: the CA (``weir.control.ca``) writes it into the certificates it issues and the
workload side (``weir.agent.certs``) reads it back out of a verified chain, which is why it
lives in this bottom layer rather than in either of them. Standard library only; it knows
nothing of X.509.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from weir.api.names import dns1123_label, dns1123_subdomain

SCHEME: Final = "spiffe://"
DEFAULT_TRUST_DOMAIN: Final = "cluster.local"


class SpiffeIdError(ValueError):
    """A SPIFFE ID, or one of its parts, is malformed; the message names the part and value."""


def trust_domain_problem(value: str) -> str | None:
    """``None`` for a usable trust domain, else what is wrong with it.

    weir takes the DNS-like subset of what the SPIFFE spec allows: a lowercase RFC 1123
    subdomain (``cluster.local``, ``prod.example.com``). SPIFFE would also allow ``_``;
    Istio's defaults and every DNS-named trust domain fit the stricter rule.
    """
    problem = dns1123_subdomain(value)
    return None if problem is None else f"trust domain {value!r} {problem}"


@dataclass(frozen=True)
class SpiffeId:
    """An Istio workload identity; validated on construction, so an instance is always well-formed."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        problems = (
            trust_domain_problem(self.trust_domain),
            _named("namespace", self.namespace, dns1123_label(self.namespace)),
            _named("service account", self.service_account, dns1123_subdomain(self.service_account)),
        )
        for problem in problems:
            if problem is not None:
                raise SpiffeIdError(problem)

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """``spiffe://td/ns/<ns>/sa/<sa>`` exactly (Istio's ``ParseIdentity``), or :class:`SpiffeIdError`."""
        if not uri.startswith(SCHEME):
            raise SpiffeIdError(f"SPIFFE ID {uri!r} does not start with {SCHEME!r}")
        parts = uri[len(SCHEME):].split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise SpiffeIdError(f"SPIFFE ID {uri!r} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<account>")
        return cls(trust_domain=parts[0], namespace=parts[2], service_account=parts[4])

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


def _named(what: str, value: str, problem: str | None) -> str | None:
    return None if problem is None else f"{what} {value!r} {problem}"
