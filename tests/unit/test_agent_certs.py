"""The workload side: key and CSR, chain verification (every check failing once), and rotation
decisions at their boundaries. Times are explicit; the CA runs on a fake clock."""

from __future__ import annotations

import base64
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from weir.agent.certs import (
    ChainError,
    draw_jitter,
    needs_rotation,
    new_key_and_csr,
    rotation_time,
    verify_chain,
)
from weir.control.ca import CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT, CertificateAuthority

from .pki_helpers import DAY, ID, T0, FakeClock, Issued

HOUR = timedelta(hours=1)
US = timedelta(microseconds=1)


def issue(cn: str, parent: Issued | None = None, *, ca: bool = True, key_cert_sign: bool = True,
          path_length: int | None = None, sans: tuple[x509.GeneralName, ...] = (),
          not_before: datetime = T0 - DAY, not_after: datetime = T0 + 30 * DAY,
          key_usage: bool = True) -> Issued:
    """A certificate signed by ``parent`` (self-signed without one); ``cn=""`` gives an empty subject."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)] if cn else [])
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(parent.cert.subject if parent else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before)
               .not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True))
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=not ca,
                          data_encipherment=False, key_agreement=False, key_cert_sign=ca and key_cert_sign,
                          crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=not cn)
    return Issued(builder.sign(parent.key if parent else key, hashes.SHA256()), key)


def leaf(parent: Issued, *, uri: str = str(ID), **kw: object) -> Issued:
    return issue("", parent, ca=False, sans=(x509.UniformResourceIdentifier(uri),), **kw)  # type: ignore[arg-type]


def flip_last_byte(pem_data: bytes) -> bytes:
    lines = pem_data.decode().strip().splitlines()
    der = bytearray(base64.b64decode("".join(lines[1:-1])))
    der[-1] ^= 0x01
    body = "\n".join(textwrap.wrap(base64.b64encode(bytes(der)).decode(), 64))
    return f"{lines[0]}\n{body}\n{lines[-1]}\n".encode()


@pytest.fixture(scope="module")
def root() -> Issued:
    return issue("root")


@pytest.fixture(scope="module")
def intermediate(root: Issued) -> Issued:
    return issue("intermediate", root)


# -- key and CSR ---------------------------------------------------------------------------------

def test_new_key_and_csr() -> None:
    key_pem, csr_pem = new_key_and_csr(ID)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS #8
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/cart")]
    assert new_key_and_csr(ID)[0] != key_pem  # a fresh key each time


def test_csr_round_trip_through_the_ca() -> None:
    ca = CertificateAuthority.self_signed(clock=FakeClock())
    key_pem, csr_pem = new_key_and_csr(ID)
    signed = ca.sign(csr_pem, identity=ID, ttl=DAY)
    assert verify_chain(signed.cert_pem, signed.chain_pem, signed.root_pem, T0) == ID
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert x509.load_pem_x509_certificate(signed.cert_pem).public_key() == key.public_key()


# -- verify_chain: success -----------------------------------------------------------------------

def write_cacerts(directory: Path, signer: Issued, chain: bytes, roots: bytes) -> Path:
    directory.mkdir()
    (directory / CA_CERT).write_bytes(signer.pem)
    (directory / CA_KEY).write_bytes(signer.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / CERT_CHAIN).write_bytes(chain)
    (directory / ROOT_CERT).write_bytes(roots)
    return directory


def test_verify_plugged_in_chain(tmp_path: Path, root: Issued, intermediate: Issued) -> None:
    ca = CertificateAuthority.from_cacerts(
        write_cacerts(tmp_path / "cacerts", intermediate, intermediate.pem + root.pem, root.pem), clock=FakeClock())
    signed = ca.sign(new_key_and_csr(ID)[1], identity=ID, ttl=DAY)
    assert verify_chain(signed.cert_pem, signed.chain_pem, signed.root_pem, T0) == ID
    # the chain without its root; the intermediate appended to the certificate (Envoy's shape)
    assert verify_chain(signed.cert_pem, intermediate.pem, root.pem, T0) == ID
    assert verify_chain(signed.cert_pem + intermediate.pem, b"", root.pem, T0) == ID
    # a trust bundle with several roots
    assert verify_chain(signed.cert_pem, intermediate.pem, issue("other").pem + root.pem, T0) == ID


def test_verify_accepts_other_sans_beside_the_spiffe_uri(root: Issued) -> None:
    cert = issue("", root, ca=False, sans=(x509.DNSName("cart.shop.svc"), x509.UniformResourceIdentifier(str(ID))))
    assert verify_chain(cert.pem, b"", root.pem, T0) == ID


def test_verify_validity_boundaries(root: Issued) -> None:
    cert = leaf(root, not_before=T0, not_after=T0 + DAY)
    assert verify_chain(cert.pem, b"", root.pem, T0) == ID
    assert verify_chain(cert.pem, b"", root.pem, T0 + DAY) == ID
    with pytest.raises(ChainError, match="the certificate expired at"):
        verify_chain(cert.pem, b"", root.pem, T0 + DAY + timedelta(seconds=1))
    with pytest.raises(ChainError, match="not valid before"):
        verify_chain(cert.pem, b"", root.pem, T0 - timedelta(seconds=1))


# -- verify_chain: failures ----------------------------------------------------------------------

def test_verify_expired_by_the_ca() -> None:
    clock = FakeClock()
    ca = CertificateAuthority.self_signed(clock=clock)
    signed = ca.sign(new_key_and_csr(ID)[1], identity=ID, ttl=HOUR)
    with pytest.raises(ChainError, match="expired"):
        verify_chain(signed.cert_pem, signed.chain_pem, signed.root_pem, T0 + 2 * HOUR)


def test_verify_expired_intermediate_and_root(root: Issued) -> None:
    old = issue("old intermediate", root, not_after=T0 - HOUR)
    cert = leaf(old, not_before=T0 - 2 * HOUR)
    with pytest.raises(ChainError, match="intermediate CN=old intermediate expired"):
        verify_chain(cert.pem, old.pem, root.pem, T0)
    old_root = issue("old root", not_after=T0 - HOUR)
    cert = leaf(old_root, not_before=T0 - 2 * HOUR)
    with pytest.raises(ChainError, match="root CN=old root expired"):
        verify_chain(cert.pem, b"", old_root.pem, T0)


def test_verify_wrong_root(root: Issued, intermediate: Issued) -> None:
    cert = leaf(intermediate)
    with pytest.raises(ChainError, match="does not lead to a trusted root"):
        verify_chain(cert.pem, intermediate.pem, issue("other root").pem, T0)
    # the chain brings its own root along: still not trusted
    with pytest.raises(ChainError, match="does not lead to a trusted root"):
        verify_chain(cert.pem, intermediate.pem + root.pem, issue("other root").pem, T0)


def test_verify_root_of_the_same_name_but_another_key(root: Issued) -> None:
    cert = leaf(root)
    with pytest.raises(ChainError, match="signature on <empty subject> does not verify"):
        verify_chain(cert.pem, b"", issue("root").pem, T0)


def test_verify_tampered(root: Issued, intermediate: Issued) -> None:
    cert = leaf(intermediate)
    with pytest.raises(ChainError, match="signature on <empty subject>"):
        verify_chain(flip_last_byte(cert.pem), intermediate.pem, root.pem, T0)
    with pytest.raises(ChainError, match="signature on CN=intermediate"):
        verify_chain(cert.pem, flip_last_byte(intermediate.pem), root.pem, T0)


def test_verify_missing_intermediate(root: Issued, intermediate: Issued) -> None:
    with pytest.raises(ChainError, match=r"nothing issued <empty subject> \(its issuer is CN=intermediate\)"):
        verify_chain(leaf(intermediate).pem, b"", root.pem, T0)


@pytest.mark.parametrize(("kw", "message"), [
    ({"ca": False}, "not a CA"),
    ({"key_cert_sign": False}, "keyCertSign"),
    ({"key_usage": False}, "keyCertSign"),
])
def test_verify_issuer_must_be_a_ca(root: Issued, kw: dict[str, bool], message: str) -> None:
    bad = issue("bad intermediate", root, **kw)  # type: ignore[arg-type]
    with pytest.raises(ChainError, match=message):
        verify_chain(leaf(bad).pem, bad.pem, root.pem, T0)


def test_verify_path_length(root: Issued) -> None:
    strict_root = issue("strict root", path_length=0)
    middle = issue("middle", strict_root)
    with pytest.raises(ChainError, match="allows 0 intermediate"):
        verify_chain(leaf(middle).pem, middle.pem, strict_root.pem, T0)
    assert verify_chain(leaf(strict_root).pem, b"", strict_root.pem, T0) == ID
    one = issue("one", root, path_length=0)
    two = issue("two", one)
    with pytest.raises(ChainError, match="intermediate CN=one allows 0"):
        verify_chain(leaf(two).pem, two.pem + one.pem, root.pem, T0)


@pytest.mark.parametrize(("make", "message"), [
    (lambda r: issue("", r, ca=True, sans=(x509.UniformResourceIdentifier(str(ID)),)), "is a CA certificate"),
    (lambda r: issue("no san", r, ca=False), "no subjectAltName"),
    (lambda r: issue("", r, ca=False, sans=(x509.DNSName("cart.shop.svc"),)), "0 URI SANs"),
    (lambda r: issue("", r, ca=False, sans=(x509.UniformResourceIdentifier(str(ID)),
                                            x509.UniformResourceIdentifier("spiffe://cluster.local/ns/a/sa/b"))),
     "2 URI SANs"),
    (lambda r: leaf(r, uri="spiffe://cluster.local/workload/cart"), "not an Istio SPIFFE ID"),
    (lambda r: leaf(r, uri="https://cart.shop"), "not an Istio SPIFFE ID"),
])
def test_verify_leaf_checks(root: Issued, make: object, message: str) -> None:
    cert = make(root)  # type: ignore[operator]
    with pytest.raises(ChainError, match=message):
        verify_chain(cert.pem, b"", root.pem, T0)


def test_verify_leaf_key_usage(root: Issued) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(root.cert.subject)
            .public_key(key.public_key()).serial_number(1).not_valid_before(T0 - DAY).not_valid_after(T0 + DAY)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(ID))]), critical=True)
            .sign(root.key, hashes.SHA256()))
    with pytest.raises(ChainError, match="digitalSignature"):
        verify_chain(cert.public_bytes(serialization.Encoding.PEM), b"", root.pem, T0)


@pytest.mark.parametrize("which", ["cert", "chain", "roots"])
def test_verify_garbage_pem(root: Issued, which: str) -> None:
    args = {"cert": leaf(root).pem, "chain": b"", "roots": root.pem}
    args[which] = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
    with pytest.raises(ChainError, match="not PEM certificates"):
        verify_chain(args["cert"], args["chain"], args["roots"], T0)


def test_verify_empty_inputs(root: Issued) -> None:
    with pytest.raises(ChainError, match="the certificate: no PEM"):
        verify_chain(b"", b"", root.pem, T0)
    with pytest.raises(ChainError, match="the roots: no PEM"):
        verify_chain(leaf(root).pem, b"", b"  \n", T0)


def test_verify_needs_an_aware_time(root: Issued) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_chain(leaf(root).pem, b"", root.pem, datetime(2030, 1, 1))


# -- rotation ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def day_cert(root: Issued) -> x509.Certificate:
    """Valid from T0 to T0 + 24h exactly."""
    return leaf(root, not_before=T0, not_after=T0 + DAY).cert


def test_rotation_at_half_life(day_cert: x509.Certificate) -> None:
    assert rotation_time(day_cert) == T0 + 12 * HOUR
    assert not needs_rotation(day_cert, T0)
    assert not needs_rotation(day_cert, T0 + 12 * HOUR - US)
    assert needs_rotation(day_cert, T0 + 12 * HOUR)
    assert needs_rotation(day_cert, T0 + DAY)
    assert needs_rotation(day_cert, T0 + 2 * DAY)  # expired: rotate at once
    assert not needs_rotation(day_cert, T0 - HOUR)  # not yet valid (our clock behind): not due


@pytest.mark.parametrize(("fraction", "due"), [
    (0.25, T0 + 18 * HOUR),
    (0.0, T0 + DAY),
    (1.0, T0),
    (0.5, T0 + 12 * HOUR),
])
def test_rotation_fraction(day_cert: x509.Certificate, fraction: float, due: datetime) -> None:
    assert rotation_time(day_cert, fraction=fraction) == due
    assert not needs_rotation(day_cert, due - US, fraction=fraction)
    assert needs_rotation(day_cert, due, fraction=fraction)


def test_rotation_jitter(day_cert: x509.Certificate) -> None:
    # jitter is a fraction of the grace period (12h): +1% rotates 7.2 minutes earlier
    early = T0 + 12 * HOUR - timedelta(minutes=7, seconds=12)
    assert rotation_time(day_cert, jitter=0.01) == early
    assert needs_rotation(day_cert, early, jitter=0.01)
    assert not needs_rotation(day_cert, early - US, jitter=0.01)
    late = T0 + 12 * HOUR + timedelta(minutes=7, seconds=12)
    assert rotation_time(day_cert, jitter=-0.01) == late
    assert not needs_rotation(day_cert, late - US, jitter=-0.01)
    assert needs_rotation(day_cert, late, jitter=-0.01)


def test_rotation_of_a_ca_issued_cert() -> None:
    """The CA backdates by its one-minute skew allowance, which counts in the lifetime."""
    clock = FakeClock()
    ca = CertificateAuthority.self_signed(clock=clock)
    signed = ca.sign(new_key_and_csr(ID)[1], identity=ID, ttl=DAY)
    due = T0 + DAY - (DAY + timedelta(minutes=1)) / 2  # T0 + 11h59m30s
    assert rotation_time(signed.cert_pem) == due
    assert not needs_rotation(signed.cert_pem, due - US)
    assert needs_rotation(signed.cert_pem, due)


def test_rotation_arguments(day_cert: x509.Certificate) -> None:
    for fraction in (-0.1, 1.1):
        with pytest.raises(ValueError, match="fraction"):
            needs_rotation(day_cert, T0, fraction=fraction)
    for jitter in (-1.0, 1.0):
        with pytest.raises(ValueError, match="jitter"):
            needs_rotation(day_cert, T0, jitter=jitter)
    with pytest.raises(ValueError, match="timezone-aware"):
        needs_rotation(day_cert, datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="not a PEM certificate"):
        needs_rotation(b"garbage", T0)


def test_draw_jitter() -> None:
    assert draw_jitter(lambda: 0.0) == pytest.approx(-0.01)
    assert draw_jitter(lambda: 0.5) == 0.0
    assert draw_jitter(lambda: 0.75, ratio=0.2) == pytest.approx(0.1)
    assert -0.01 <= draw_jitter(lambda: 0.999999) < 0.01
