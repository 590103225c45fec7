"""Identity material shared by layers that may not import each other.

This module: X.509 helpers for the CA (``weir.control.ca``) and the workload side
(``weir.agent.certs``). :mod:`weir.pki.tokens`: the workload identity tokens the runtime mints
for pods and the CA service (``weir.control.casvc``) verifies."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm


def find_issuer(child: x509.Certificate,
                candidates: Iterable[x509.Certificate]) -> tuple[x509.Certificate | None, bool]:
    """The candidate whose key signed ``child``, and whether any candidate bore the issuer's name."""
    named = [c for c in candidates if c.subject == child.issuer]
    for candidate in named:
        try:
            child.verify_directly_issued_by(candidate)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            continue
        return candidate, True
    return None, bool(named)
