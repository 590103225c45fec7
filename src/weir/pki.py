"""X.509 helpers shared by the CA (``weir.control.ca``) and the workload side (``weir.agent.certs``),
which may not import each other."""

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
