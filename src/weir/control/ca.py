"""weir's certificate authority (istiod's CA): signs workload CSRs with SPIFFE identities.

A :class:`CertificateAuthority` is a value: a signing key, its certificate, the path from that
certificate up to a root, the trust bundle and an injected clock. It comes from one of two
places, as in Istio:

- :meth:`CertificateAuthority.self_signed` makes a fresh root (Istio's ``istio-ca-secret``).
- :meth:`CertificateAuthority.from_cacerts` loads Istio's plugged-in layout (the ``cacerts``
  secret): ``ca-cert.pem``, ``ca-key.pem``, ``root-cert.pem``, ``cert-chain.pem``, checked as
  istiod checks it; each problem is a :class:`CacertsError` that names the file.

:meth:`CertificateAuthority.sign` is pure apart from the random serial number: it reads no
files, opens no sockets and takes the time from the clock. Who the caller is (the
authenticated identity) is decided by the driver that receives the request; ``sign`` only
checks that the CSR does not ask for anything else. This module must not know about gRPC,
Kubernetes or the workload side (``weir.agent``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal, get_args

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from weir.api.names import dns1123_subdomain
from weir.api.spiffe import SpiffeId, trust_domain_problem
from weir.pki import find_issuer

Clock = Callable[[], datetime]
"""Returns the current time as an aware datetime (UTC)."""

KeyType = Literal["ec-p256", "rsa-2048"]

CA_CERT: Final = "ca-cert.pem"
CA_KEY: Final = "ca-key.pem"
ROOT_CERT: Final = "root-cert.pem"
CERT_CHAIN: Final = "cert-chain.pem"

CLOCK_SKEW: Final = timedelta(minutes=1)
"""Issued certificates are valid from this long before ``now``, for peers whose clocks lag."""
DEFAULT_CA_TTL: Final = timedelta(days=3650)
"""A self-signed root's lifetime: Istio's ``CITADEL_SELF_SIGNED_CA_CERT_TTL`` (87600h)."""
DEFAULT_MAX_WORKLOAD_TTL: Final = timedelta(days=90)
"""The longest workload certificate ``sign`` grants: Istio's ``MAX_WORKLOAD_CERT_TTL``."""
MAX_CHAIN_DEPTH: Final = 8
MIN_RSA_BITS: Final = 2048

_SIGNING_KEYS = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_Hash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512
_EC_CURVES: Final[dict[str, type[_Hash]]] = {
    "secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512,
}


class CacertsError(ValueError):
    """Plugged-in CA material is unusable. ``file`` is the layout's file name (e.g. ``ca-key.pem``)."""

    def __init__(self, file: str, message: str, origin: str | os.PathLike[str] | None = None) -> None:
        self.file = file
        self.message = message
        self.where = str(Path(origin) / file) if origin is not None else file
        super().__init__(f"{self.where}: {message}")


class SigningError(ValueError):
    """``sign`` refused: a malformed or forged CSR, a CSR asking for another identity, a TTL
    out of range, or a CA that can no longer sign. Permanent: retrying the same request fails."""


@dataclass(frozen=True)
class SignedCert:
    """What ``sign`` returns, all PEM. ``chain_pem`` is the issuer path from the signing
    certificate up to and including its root; ``root_pem`` is the whole trust bundle."""

    cert_pem: bytes
    chain_pem: bytes
    root_pem: bytes
    not_after: datetime


@dataclass(frozen=True)
class ServingCert:
    """A TLS server certificate the CA issued for the control plane itself (istiod's DNS
    certificate, served on 15012). ``cert_chain_pem`` is what a TLS server sends: the leaf,
    then the CA's chain without the root."""

    cert_chain_pem: bytes
    key_pem: bytes = field(repr=False)
    not_after: datetime


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, eq=False)
class CertificateAuthority:
    """A CA able to sign workload certificates. Build it with :meth:`self_signed`,
    :meth:`from_cacerts` or :meth:`from_pem`; the constructor trusts its arguments."""

    key: SigningKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]
    """The signing certificate first, then each issuer up to and including a root."""
    roots: tuple[x509.Certificate, ...]
    """The trust bundle (``root-cert.pem``); the chain's last certificate is one of them."""
    trust_domain: str = "cluster.local"
    clock: Clock = system_clock
    max_workload_ttl: timedelta = DEFAULT_MAX_WORKLOAD_TTL

    @property
    def cert(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> datetime:
        """When the CA stops being able to sign: the earliest expiry along its chain."""
        return min(c.not_valid_after_utc for c in self.chain)

    @property
    def chain_pem(self) -> bytes:
        return _pems(self.chain)

    @property
    def root_pem(self) -> bytes:
        return _pems(self.roots)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def self_signed(cls, trust_domain: str = "cluster.local", *, clock: Clock = system_clock,
                    key_type: KeyType = "ec-p256", ttl: timedelta = DEFAULT_CA_TTL,
                    max_workload_ttl: timedelta = DEFAULT_MAX_WORKLOAD_TTL) -> CertificateAuthority:
        """A fresh root CA. Subject ``CN=weir root CA, O=<trust domain>`` (Istio's self-signed
        root has ``O=<trust domain>``); CA:true (critical), keyCertSign + cRLSign."""
        problem = trust_domain_problem(trust_domain)
        if problem is not None:
            raise ValueError(problem)
        if key_type not in get_args(KeyType):
            raise ValueError(f"key_type {key_type!r} is not one of {', '.join(get_args(KeyType))}")
        if ttl <= timedelta(0):
            raise ValueError(f"ttl must be positive, not {ttl}")
        key: SigningKey = (ec.generate_private_key(ec.SECP256R1()) if key_type == "ec-p256"
                           else rsa.generate_private_key(public_exponent=65537, key_size=2048))
        now = _aware(clock())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                          x509.NameAttribute(NameOID.COMMON_NAME, "weir root CA")])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(random_serial())
                .not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(now + ttl)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(_key_usage(key_cert_sign=True), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, _hash_for(key)))
        return cls(key=key, chain=(cert,), roots=(cert,), trust_domain=trust_domain, clock=clock,
                   max_workload_ttl=max_workload_ttl)

    @classmethod
    def from_cacerts(cls, directory: str | os.PathLike[str], *, trust_domain: str = "cluster.local",
                     clock: Clock = system_clock,
                     max_workload_ttl: timedelta = DEFAULT_MAX_WORKLOAD_TTL) -> CertificateAuthority:
        """Load Istio's plugged-in CA layout from ``directory`` (all four files required;
        ``cert-chain.pem`` may be empty when ``ca-cert.pem`` is itself the root)."""
        contents: dict[str, bytes] = {}
        for name in (CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN):
            try:
                contents[name] = (Path(directory) / name).read_bytes()
            except FileNotFoundError:
                raise CacertsError(name, f"missing (a plugged-in CA needs {CA_CERT}, {CA_KEY}, {ROOT_CERT} "
                                         f"and {CERT_CHAIN})", directory) from None
            except OSError as e:
                raise CacertsError(name, f"cannot be read: {e.strerror or e}", directory) from None
        return cls.from_pem(ca_cert=contents[CA_CERT], ca_key=contents[CA_KEY], root_cert=contents[ROOT_CERT],
                            cert_chain=contents[CERT_CHAIN], trust_domain=trust_domain, clock=clock,
                            max_workload_ttl=max_workload_ttl, origin=directory)

    @classmethod
    def from_pem(cls, *, ca_cert: bytes, ca_key: bytes, root_cert: bytes, cert_chain: bytes = b"",
                 trust_domain: str = "cluster.local", clock: Clock = system_clock,
                 max_workload_ttl: timedelta = DEFAULT_MAX_WORKLOAD_TTL,
                 origin: str | os.PathLike[str] | None = None) -> CertificateAuthority:
        """The checks of :meth:`from_cacerts` on the files' contents (``origin`` only labels errors).

        The key must match ``ca-cert.pem``; ``ca-cert.pem`` must be a CA with keyCertSign and
        chain, through the certificates of ``cert-chain.pem`` (which, as Istio lays it out, may
        also hold ``ca-cert.pem`` and the root), to one of the roots in ``root-cert.pem``, every
        certificate on the way a valid CA now.
        """
        problem = trust_domain_problem(trust_domain)
        if problem is not None:
            raise ValueError(problem)
        now = _aware(clock())

        def fail(file: str, message: str) -> CacertsError:
            return CacertsError(file, message, origin)

        certs = _load_certs(ca_cert, CA_CERT, fail)
        if len(certs) != 1:
            raise fail(CA_CERT, f"holds {len(certs)} certificates; expected exactly one "
                                f"(intermediates belong in {CERT_CHAIN})")
        signer = certs[0]
        key = _load_key(ca_key, fail)
        if _spki(key.public_key()) != _spki(signer.public_key()):
            raise fail(CA_KEY, f"does not match the public key of {CA_CERT} ({_name(signer.subject)})")
        roots = _load_certs(root_cert, ROOT_CERT, fail)
        intermediates = _load_certs(cert_chain, CERT_CHAIN, fail, allow_empty=True)
        pool = [c for c in intermediates if c != signer and c not in roots]

        _check_signer(signer, now, CA_CERT, fail)
        chain = [signer]
        while True:
            current = chain[-1]
            anchor, root_named = find_issuer(current, roots)
            if anchor is not None:
                break
            parent, pool_named = find_issuer(current, [c for c in pool if c not in chain])
            if parent is None:
                if root_named or pool_named:
                    raise fail(CA_CERT if len(chain) == 1 else CERT_CHAIN,
                               f"the signature on {_name(current.subject)} does not verify with the key of "
                               f"{_name(current.issuer)} in {ROOT_CERT if root_named else CERT_CHAIN} "
                               f"(a tampered certificate, or an issuer regenerated with a new key)")
                if current.issuer == current.subject:
                    raise fail(ROOT_CERT, f"does not hold the root that {CA_CERT} chains to: "
                                          f"the chain ends at self-signed {_name(current.subject)}")
                raise fail(CERT_CHAIN, f"{CA_CERT} does not chain to {ROOT_CERT}: no certificate here or in "
                                       f"{ROOT_CERT} issued {_name(current.subject)} (its issuer is "
                                       f"{_name(current.issuer)})")
            if len(chain) >= MAX_CHAIN_DEPTH:
                raise fail(CERT_CHAIN, f"the chain from {CA_CERT} is longer than {MAX_CHAIN_DEPTH} certificates")
            _check_signer(parent, now, CERT_CHAIN, fail)
            chain.append(parent)
        if anchor != chain[-1]:
            _check_signer(anchor, now, ROOT_CERT, fail)
            chain.append(anchor)
        return cls(key=key, chain=tuple(chain), roots=tuple(roots), trust_domain=trust_domain, clock=clock,
                   max_workload_ttl=max_workload_ttl)

    # -- persistence -------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write Istio's plugged-in layout into ``directory`` (created 0700 if missing).

        ``cert-chain.pem`` gets the issuer path from ``ca-cert.pem`` to the root, as Istio's
        ``tools/certs`` makes it, so :meth:`from_cacerts` reads back the same CA. Each file is
        replaced atomically (temporary file in the same directory, fsync, rename), the key
        created 0600 from the start; all four are staged before the first rename, so a reader
        sees the old or the new set except for the instant between renames, and a mixed set
        fails :meth:`from_cacerts`'s key check rather than loading.
        """
        target = Path(directory)
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        files = ((CA_CERT, _pems(self.chain[:1]), 0o644), (CERT_CHAIN, self.chain_pem, 0o644),
                 (ROOT_CERT, self.root_pem, 0o644), (CA_KEY, key_pem, 0o600))
        staged: list[tuple[str, Path]] = []
        try:
            for name, data, mode in files:
                staged.append((_stage(target, name, data, mode), target / name))
            for tmp, final in staged:
                os.replace(tmp, final)
        finally:
            for tmp, _ in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- signing -----------------------------------------------------------------------------

    def sign(self, csr_pem: bytes, *, identity: SpiffeId, ttl: timedelta) -> SignedCert:
        """Issue a workload certificate for ``identity`` (already authenticated by the caller).

        The CSR must carry a valid self-signature, and its subjectAltName must be absent or be
        exactly the one URI SAN ``identity``: a CSR asking for any other name (a different
        SPIFFE ID, a DNS name, an extra SAN) is refused rather than silently narrowed, as
        Istio checks the CSR against the caller. Everything else in the CSR (subject, other
        extension requests) is ignored: the certificate is built from scratch with an empty
        subject, the SPIFFE URI as its only (critical) SAN, digitalSignature + keyEncipherment,
        serverAuth + clientAuth, CA:false, a random 128-bit serial, valid from ``now - 1 min``
        to ``now + ttl`` capped by the CA chain's earliest expiry.
        """
        if identity.trust_domain != self.trust_domain:
            raise SigningError(f"identity {identity} is outside this CA's trust domain {self.trust_domain!r}")
        if ttl <= timedelta(0):
            raise SigningError(f"requested TTL {ttl} is not positive")
        if ttl > self.max_workload_ttl:
            raise SigningError(f"requested TTL {ttl} is greater than the max allowed TTL {self.max_workload_ttl}")
        csr = _load_csr(csr_pem, identity)
        now = _aware(self.clock())
        ca_expiry = self.not_after
        if now >= ca_expiry:
            raise SigningError(f"the CA cannot sign: its chain expired at {ca_expiry.isoformat()}")
        not_after = min(now + ttl, ca_expiry)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(self.cert.subject)
                .public_key(csr.public_key())
                .serial_number(random_serial())
                .not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
                               critical=True)
                .add_extension(_authority_key_id(self.cert, self.key), critical=False)
                .sign(self.key, _hash_for(self.key)))
        return SignedCert(cert_pem=_pems([cert]), chain_pem=self.chain_pem, root_pem=self.root_pem,
                          not_after=cert.not_valid_after_utc)

    def serving_cert(self, dns_names: Sequence[str],
                     ips: Sequence[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (), *,
                     ttl: timedelta) -> ServingCert:
        """A fresh EC P-256 key and a server certificate for ``dns_names`` and ``ips`` (DNS and
        IP SANs, critical; empty subject), serverAuth, CA:false, valid from ``now - 1 min`` to
        ``now + ttl`` capped by the CA chain's earliest expiry. Clients that trust this CA's
        roots can then verify the control plane by name, as Istio's agents verify istiod."""
        names = list(dns_names)
        addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for name in names:
            problem = dns1123_subdomain(name)
            if problem is not None:
                raise ValueError(f"serving certificate DNS name {name!r} {problem}")
        for ip in ips:
            try:
                addresses.append(ipaddress.ip_address(ip))
            except ValueError:
                raise ValueError(f"serving certificate IP {ip!r} is not an IP address") from None
        if not names and not addresses:
            raise ValueError("a serving certificate needs at least one DNS name or IP address")
        if ttl <= timedelta(0):
            raise ValueError(f"serving certificate ttl must be positive, not {ttl}")
        now = _aware(self.clock())
        ca_expiry = self.not_after
        if now >= ca_expiry:
            raise SigningError(f"the CA cannot sign: its chain expired at {ca_expiry.isoformat()}")
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names)]
        sans += [x509.IPAddress(a) for a in dict.fromkeys(addresses)]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(self.cert.subject)
                .public_key(key.public_key())
                .serial_number(random_serial())
                .not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(min(now + ttl, ca_expiry))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName(sans), critical=True)
                .add_extension(_authority_key_id(self.cert, self.key), critical=False)
                .sign(self.key, _hash_for(self.key)))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return ServingCert(cert_chain_pem=_pems([cert, *(c for c in self.chain if c not in self.roots)]),
                           key_pem=key_pem, not_after=cert.not_valid_after_utc)


def random_serial() -> int:
    """A random, positive 128-bit serial number (Istio's ``genSerialNum``)."""
    return secrets.randbelow((1 << 128) - 1) + 1


# -- CSR ---------------------------------------------------------------------------------------

def _load_csr(csr_pem: bytes, identity: SpiffeId) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise SigningError(f"the CSR is not a PEM-encoded PKCS #10 request: {e}") from None
    try:
        valid = csr.is_signature_valid
    except (UnsupportedAlgorithm, ValueError) as e:
        raise SigningError(f"the CSR's signature cannot be checked: {e}") from None
    if not valid:
        raise SigningError("the CSR's signature does not verify with its own public key")
    public_key = csr.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise SigningError(f"the CSR's RSA key has {public_key.key_size} bits; at least {MIN_RSA_BITS} needed")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in _EC_CURVES:
            raise SigningError(f"the CSR's EC curve {public_key.curve.name} is not one of {', '.join(_EC_CURVES)}")
    elif not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise SigningError(f"the CSR's key type {type(public_key).__name__} is not EC, RSA or Ed25519")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return csr
    except ValueError as e:
        raise SigningError(f"the CSR's extensions are malformed: {e}") from None
    asked = list(san)
    if asked != [x509.UniformResourceIdentifier(str(identity))]:
        shown = ", ".join(_general_name(n) for n in asked) or "an empty subjectAltName"
        raise SigningError(f"the CSR asks for {shown}, but the caller's identity is {identity}")
    return csr


def _general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    return type(name).__name__


# -- loading and checking CA material ---------------------------------------------------------

Fail = Callable[[str, str], CacertsError]


def _load_certs(data: bytes, file: str, fail: Fail, *, allow_empty: bool = False) -> list[x509.Certificate]:
    if not data.strip():
        if allow_empty:
            return []
        raise fail(file, "is empty; expected PEM certificates")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise fail(file, f"is not PEM certificates: {e}") from None


def _load_key(data: bytes, fail: Fail) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise fail(CA_KEY, f"is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, _SIGNING_KEYS):
        raise fail(CA_KEY, f"holds a {type(key).__name__}; a CA key must be EC, RSA or Ed25519")
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name not in _EC_CURVES:
        raise fail(CA_KEY, f"uses EC curve {key.curve.name}; expected one of {', '.join(_EC_CURVES)}")
    return key


def _check_signer(cert: x509.Certificate, now: datetime, file: str, fail: Fail) -> None:
    """``cert`` may issue certificates now: CA:true, keyCertSign, within its validity."""
    who = _name(cert.subject)
    try:
        extensions = cert.extensions
    except ValueError as e:
        raise fail(file, f"{who} has malformed extensions: {e}") from None
    try:
        bc: x509.BasicConstraints | None = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise fail(file, f"{who} is not a CA certificate (basicConstraints CA:true is missing)")
    try:
        ku: x509.KeyUsage | None = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is None or not ku.key_cert_sign:
        raise fail(file, f"{who} may not sign certificates (keyUsage keyCertSign is missing)")
    if now < cert.not_valid_before_utc:
        raise fail(file, f"{who} is not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise fail(file, f"{who} expired at {cert.not_valid_after_utc.isoformat()}")


# -- small helpers -----------------------------------------------------------------------------

def _stage(directory: Path, name: str, data: bytes, mode: int) -> str:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")  # created 0600
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _key_usage(*, digital_signature: bool = False, key_encipherment: bool = False,
               key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
                         key_cert_sign=key_cert_sign, crl_sign=key_cert_sign, encipher_only=False,
                         decipher_only=False)


def _authority_key_id(issuer: x509.Certificate, key: SigningKey) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _hash_for(key: SigningKey) -> _Hash | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return _EC_CURVES[key.curve.name]()
    return hashes.SHA256()


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pems(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _name(name: x509.Name) -> str:
    return name.rfc4514_string() or "<empty subject>"


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"the clock returned a naive datetime ({now.isoformat()}); it must be timezone-aware")
    return now.astimezone(UTC)
