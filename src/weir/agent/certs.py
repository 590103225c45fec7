"""The workload side of mesh certificates: key and CSR, chain verification, rotation timing.

Pure functions over bytes and datetimes (pilot-agent's ``SecretManagerClient`` logic without
its timers): nothing here reads a clock, a file or a socket. The SDS driver asks the CA to
sign :func:`new_key_and_csr`'s CSR, checks the answer with :func:`verify_chain` before
handing it to Envoy, and sleeps until :func:`rotation_time`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from weir.api.spiffe import SpiffeId, SpiffeIdError
from weir.pki import find_issuer

DEFAULT_GRACE_PERIOD_RATIO: Final = 0.5
"""Rotate once this fraction of the lifetime remains: Istio's ``SECRET_GRACE_PERIOD_RATIO``."""
DEFAULT_GRACE_PERIOD_RATIO_JITTER: Final = 0.01
"""Spread of the grace period across workloads: Istio's ``SECRET_GRACE_PERIOD_RATIO_JITTER``."""
MAX_CHAIN_DEPTH: Final = 8


class ChainError(ValueError):
    """A workload certificate failed verification; the message says which check and which certificate."""


def new_key_and_csr(identity: SpiffeId) -> tuple[bytes, bytes]:
    """A fresh EC P-256 key (PKCS #8 PEM) and a CSR (PEM) for ``identity``.

    The CSR has an empty subject and ``identity`` as its one, critical, URI SAN, which is what
    ``CertificateAuthority.sign`` accepts for that identity.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
                          critical=True)
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def verify_chain(cert_pem: bytes, chain_pem: bytes, roots_pem: bytes, now: datetime) -> SpiffeId:
    """Check a workload certificate by hand and return the SPIFFE ID it proves.

    ``cert_pem`` starts with the workload certificate (further certificates in it join the
    chain); ``chain_pem`` holds intermediates, and may hold the root too, as the CA sends it;
    only ``roots_pem`` is trusted. Checks: the leaf is not a CA, may sign (digitalSignature
    when keyUsage is present) and has exactly one URI SAN, a valid SPIFFE ID; each link's
    signature verifies with its issuer's key and names match; every certificate on the path,
    the root included, is valid at ``now``; every issuer is a CA with keyCertSign and its
    pathLenConstraint holds. Any failure is a :class:`ChainError`.
    """
    now = _aware(now)
    leaf, *extra = _load(cert_pem, "the certificate")
    pool = [*extra, *_load(chain_pem, "the chain", allow_empty=True)]
    roots = _load(roots_pem, "the roots")

    _check_time(leaf, now, "the certificate")
    if _basic_constraints(leaf).ca:
        raise ChainError(f"the certificate {_name(leaf.subject)} is a CA certificate, not a workload certificate")
    usage = _key_usage(leaf)
    if usage is not None and not usage.digital_signature:
        raise ChainError("the certificate's keyUsage lacks digitalSignature")
    identity = _identity(leaf)

    path = [leaf]
    while True:
        current = path[-1]
        below = len(path) - 1  # intermediates between this issuer and the leaf
        anchor, root_named = find_issuer(current, roots)
        if anchor is not None:
            _check_issuer(anchor, now, below, "root")
            return identity
        if len(path) > MAX_CHAIN_DEPTH:
            raise ChainError(f"the chain is longer than {MAX_CHAIN_DEPTH} certificates")
        parent, pool_named = find_issuer(current, [c for c in pool if c not in path])
        if parent is None:
            if root_named or pool_named:
                raise ChainError(f"the signature on {_name(current.subject)} does not verify with the key of "
                                 f"its issuer {_name(current.issuer)}")
            raise ChainError(f"the chain does not lead to a trusted root: nothing issued {_name(current.subject)} "
                             f"(its issuer is {_name(current.issuer)})")
        _check_issuer(parent, now, below, "intermediate")
        path.append(parent)


def rotation_time(cert: x509.Certificate | bytes, *, fraction: float = DEFAULT_GRACE_PERIOD_RATIO,
                  jitter: float = 0.0) -> datetime:
    """When to replace ``cert``: once ``fraction`` of its lifetime (notBefore to notAfter)
    remains, as Istio's ``rotateTime`` computes it.

    ``jitter`` is a signed fraction of that grace period, drawn by the caller (see
    :func:`draw_jitter`) so that this stays pure: positive rotates earlier.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], not {fraction}")
    if not -1.0 < jitter < 1.0:
        raise ValueError(f"jitter must be within (-1, 1), not {jitter}")
    c = _one(cert)
    lifetime = c.not_valid_after_utc - c.not_valid_before_utc
    return c.not_valid_after_utc - lifetime * (fraction * (1.0 + jitter))


def needs_rotation(cert: x509.Certificate | bytes, now: datetime, fraction: float = DEFAULT_GRACE_PERIOD_RATIO,
                   jitter: float = 0.0) -> bool:
    """Whether ``cert`` is due for replacement at ``now`` (at :func:`rotation_time` or later)."""
    return _aware(now) >= rotation_time(cert, fraction=fraction, jitter=jitter)


def draw_jitter(uniform: Callable[[], float], ratio: float = DEFAULT_GRACE_PERIOD_RATIO_JITTER) -> float:
    """A jitter for :func:`rotation_time` from ``uniform()`` in [0, 1): uniform in [-ratio, ratio)."""
    return (uniform() * 2.0 - 1.0) * ratio


# -- checks ------------------------------------------------------------------------------------

def _identity(leaf: x509.Certificate) -> SpiffeId:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ChainError("the certificate has no subjectAltName, so no SPIFFE ID") from None
    except ValueError as e:
        raise ChainError(f"the certificate's extensions are malformed: {e}") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise ChainError(f"the certificate has {len(uris)} URI SANs; a SPIFFE certificate has exactly one")
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as e:
        raise ChainError(f"the certificate's URI SAN is not an Istio SPIFFE ID: {e}") from None


def _check_issuer(cert: x509.Certificate, now: datetime, below: int, role: str) -> None:
    who = f"{role} {_name(cert.subject)}"
    bc = _basic_constraints(cert)
    if not bc.ca:
        raise ChainError(f"{who} issued a certificate but is not a CA (basicConstraints CA:true is missing)")
    usage = _key_usage(cert)
    if usage is None or not usage.key_cert_sign:
        raise ChainError(f"{who} issued a certificate but may not (keyUsage keyCertSign is missing)")
    if bc.path_length is not None and below > bc.path_length:
        raise ChainError(f"{who} allows {bc.path_length} intermediate(s) below it; the chain has {below}")
    _check_time(cert, now, who)


def _check_time(cert: x509.Certificate, now: datetime, who: str) -> None:
    if now < cert.not_valid_before_utc:
        raise ChainError(f"{who} is not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise ChainError(f"{who} expired at {cert.not_valid_after_utc.isoformat()}")


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return x509.BasicConstraints(ca=False, path_length=None)
    except ValueError as e:
        raise ChainError(f"{_name(cert.subject)}: malformed extensions: {e}") from None


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as e:
        raise ChainError(f"{_name(cert.subject)}: malformed extensions: {e}") from None


# -- parsing -----------------------------------------------------------------------------------

def _load(data: bytes, what: str, *, allow_empty: bool = False) -> list[x509.Certificate]:
    if not data.strip():
        if allow_empty:
            return []
        raise ChainError(f"{what}: no PEM certificates")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ChainError(f"{what}: not PEM certificates: {e}") from None


def _one(cert: x509.Certificate | bytes) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    try:
        return x509.load_pem_x509_certificate(cert)
    except ValueError as e:
        raise ValueError(f"not a PEM certificate: {e}") from None


def _name(name: x509.Name) -> str:
    return name.rfc4514_string() or "<empty subject>"


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, not {now.isoformat()}")
    return now
