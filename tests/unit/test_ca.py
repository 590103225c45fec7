"""The CA: SPIFFE IDs, self-signed and plugged-in (Istio ``cacerts``) CAs, every broken layout,
signing (SAN, key usages, validity and its cap, chain) and the CSRs it refuses. A fake clock
throughout; the CA material for plugged-in layouts is built here with ``cryptography``."""

from __future__ import annotations

import base64
import os
import stat
import textwrap
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from weir.api.spiffe import SpiffeId, SpiffeIdError
from weir.control.ca import (
    CA_CERT,
    CA_KEY,
    CERT_CHAIN,
    CLOCK_SKEW,
    ROOT_CERT,
    CacertsError,
    CertificateAuthority,
    SigningError,
)

from .pki_helpers import DAY, ID, T0, FakeClock, Issued

# -- building CA material ------------------------------------------------------------------------

def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(cn: str, parent: Issued | None = None, *, ca: bool = True, key_cert_sign: bool = True,
          not_before: datetime = T0 - 30 * DAY, not_after: datetime = T0 + 365 * DAY,
          key: ec.EllipticCurvePrivateKey | None = None, path_length: int | None = None) -> Issued:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(name(cn))
               .issuer_name(parent.cert.subject if parent else name(cn))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before)
               .not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
                                            crl_sign=key_cert_sign, encipher_only=False, decipher_only=False),
                              critical=True))
    return Issued(builder.sign(parent.key if parent else key, hashes.SHA256()), key)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def lay_out(directory: Path, signer: Issued, chain: list[x509.Certificate], roots: list[x509.Certificate]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CA_CERT).write_bytes(pem(signer.cert))
    (directory / CA_KEY).write_bytes(key_pem(signer.key))
    (directory / CERT_CHAIN).write_bytes(pem(*chain))
    (directory / ROOT_CERT).write_bytes(pem(*roots))
    return directory


@pytest.fixture(scope="module")
def root() -> Issued:
    return issue("root")


@pytest.fixture(scope="module")
def intermediate(root: Issued) -> Issued:
    return issue("intermediate", root)


@pytest.fixture
def cacerts(tmp_path: Path, root: Issued, intermediate: Issued) -> Path:
    """Istio's layout as ``tools/certs`` makes it: cert-chain.pem = ca-cert + root."""
    return lay_out(tmp_path / "cacerts", intermediate, [intermediate.cert, root.cert], [root.cert])


def csr_for(*names: x509.GeneralName, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def flip_last_byte(pem_data: bytes) -> bytes:
    """The same PEM with its signature's last byte changed: still parses, no longer verifies."""
    lines = pem_data.decode().strip().splitlines()
    der = bytearray(base64.b64decode("".join(lines[1:-1])))
    der[-1] ^= 0x01
    body = "\n".join(textwrap.wrap(base64.b64encode(bytes(der)).decode(), 64))
    return f"{lines[0]}\n{body}\n{lines[-1]}\n".encode()


E = TypeVar("E", bound=x509.ExtensionType)


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


# -- SpiffeId ------------------------------------------------------------------------------------

def test_spiffe_id_round_trip() -> None:
    uri = "spiffe://cluster.local/ns/shop/sa/cart"
    assert SpiffeId.parse(uri) == ID
    assert str(ID) == uri
    assert str(SpiffeId.parse("spiffe://prod.example.com/ns/a-b/sa/svc.account-1")) == \
        "spiffe://prod.example.com/ns/a-b/sa/svc.account-1"


@pytest.mark.parametrize("uri", [
    "http://cluster.local/ns/shop/sa/cart",
    "spiffe://cluster.local/ns/shop",
    "spiffe://cluster.local/ns/shop/sa/cart/extra",
    "spiffe://cluster.local/ns/shop/sa/",
    "spiffe://cluster.local/namespace/shop/sa/cart",
    "spiffe://Cluster.Local/ns/shop/sa/cart",
    "spiffe:///ns/shop/sa/cart",
    "spiffe://cluster.local/ns/sh.op/sa/cart",
    "spiffe://cluster.local/ns/shop/sa/Cart",
    "spiffe://cluster.local/ns/shop/sa/cart?x=1",
    "SPIFFE://cluster.local/ns/shop/sa/cart",
])
def test_spiffe_id_rejects(uri: str) -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.parse(uri)


def test_spiffe_id_validates_on_construction() -> None:
    with pytest.raises(SpiffeIdError, match="namespace 'x_y'"):
        SpiffeId("cluster.local", "x_y", "default")
    with pytest.raises(SpiffeIdError, match="trust domain"):
        SpiffeId("bad_domain", "default", "default")
    with pytest.raises(SpiffeIdError, match="service account"):
        SpiffeId("cluster.local", "default", "-sa")


# -- self-signed ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("key_type", "key_class"), [("ec-p256", ec.EllipticCurvePublicKey),
                                                     ("rsa-2048", rsa.RSAPublicKey)])
def test_self_signed_root(key_type: str, key_class: type) -> None:
    ca = CertificateAuthority.self_signed(clock=FakeClock(), key_type=key_type)  # type: ignore[arg-type]
    cert = ca.cert
    assert isinstance(cert.public_key(), key_class)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "cluster.local"
    bc = ext(cert, x509.BasicConstraints)
    assert (bc.critical, bc.value.ca) == (True, True)
    ku = ext(cert, x509.KeyUsage)
    assert (ku.critical, ku.value.key_cert_sign, ku.value.crl_sign) == (True, True, True)
    assert cert.not_valid_before_utc == T0 - CLOCK_SKEW
    assert cert.not_valid_after_utc == T0 + timedelta(days=3650)
    cert.verify_directly_issued_by(cert)
    assert ca.chain == ca.roots == (cert,)
    assert ca.root_pem == ca.chain_pem == pem(cert)
    assert ca.not_after == cert.not_valid_after_utc


def test_self_signed_options_are_checked() -> None:
    ca = CertificateAuthority.self_signed("prod.example.com", clock=FakeClock(), ttl=timedelta(days=30))
    assert ca.trust_domain == "prod.example.com"
    assert ca.not_after == T0 + timedelta(days=30)
    with pytest.raises(ValueError, match="trust domain"):
        CertificateAuthority.self_signed("Not A Domain", clock=FakeClock())
    with pytest.raises(ValueError, match="key_type"):
        CertificateAuthority.self_signed(clock=FakeClock(), key_type="dsa-1024")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        CertificateAuthority.self_signed(clock=FakeClock(), ttl=timedelta(0))
    with pytest.raises(ValueError, match="naive"):
        CertificateAuthority.self_signed(clock=lambda: datetime(2030, 1, 1))


def test_save_and_reload(tmp_path: Path) -> None:
    ca = CertificateAuthority.self_signed(clock=FakeClock())
    target = tmp_path / "out" / "cacerts"
    ca.save(target)
    assert sorted(os.listdir(target)) == sorted([CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT])  # no temporaries left
    assert stat.S_IMODE((target / CA_KEY).stat().st_mode) == 0o600
    assert stat.S_IMODE((target / CA_CERT).stat().st_mode) == 0o644
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    again = CertificateAuthority.from_cacerts(target, clock=FakeClock())
    assert (again.chain, again.roots) == (ca.chain, ca.roots)
    signed = again.sign(csr_for(), identity=ID, ttl=DAY)
    x509.load_pem_x509_certificate(signed.cert_pem).verify_directly_issued_by(ca.cert)

    other = CertificateAuthority.self_signed(clock=FakeClock(), key_type="rsa-2048")
    other.save(target)  # replaces the files in place
    assert CertificateAuthority.from_cacerts(target, clock=FakeClock()).cert == other.cert
    assert sorted(os.listdir(target)) == sorted([CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT])


def test_save_plugged_in_round_trip(cacerts: Path, tmp_path: Path, intermediate: Issued, root: Issued) -> None:
    ca = CertificateAuthority.from_cacerts(cacerts, clock=FakeClock())
    ca.save(tmp_path / "copy")
    assert (tmp_path / "copy" / CERT_CHAIN).read_bytes() == pem(intermediate.cert, root.cert)
    assert CertificateAuthority.from_cacerts(tmp_path / "copy", clock=FakeClock()).chain == ca.chain


# -- plugged-in CA (cacerts) ---------------------------------------------------------------------

def test_from_cacerts_istio_layout(cacerts: Path, root: Issued, intermediate: Issued) -> None:
    ca = CertificateAuthority.from_cacerts(cacerts, clock=FakeClock())
    assert ca.cert == intermediate.cert
    assert ca.chain == (intermediate.cert, root.cert)
    assert ca.roots == (root.cert,)
    signed = ca.sign(csr_for(), identity=ID, ttl=DAY)
    assert signed.chain_pem == pem(intermediate.cert, root.cert)
    assert signed.root_pem == pem(root.cert)
    x509.load_pem_x509_certificate(signed.cert_pem).verify_directly_issued_by(intermediate.cert)


def test_from_cacerts_chain_variants(tmp_path: Path, root: Issued, intermediate: Issued) -> None:
    # cert-chain.pem with only the intermediates (no ca-cert, no root)
    ca = CertificateAuthority.from_cacerts(lay_out(tmp_path / "a", intermediate, [], [root.cert]),
                                           clock=FakeClock())
    assert ca.chain == (intermediate.cert, root.cert)
    # a single-level CA: ca-cert is the root, cert-chain.pem empty (Istio's istio-ca-secret)
    ca = CertificateAuthority.from_cacerts(lay_out(tmp_path / "b", root, [], [root.cert]), clock=FakeClock())
    assert ca.chain == (root.cert,)
    # three levels, cert-chain.pem in any order, a second (unrelated) root in the bundle first
    issuing = issue("issuing", intermediate)
    other_root = issue("other root")
    ca = CertificateAuthority.from_cacerts(
        lay_out(tmp_path / "c", issuing, [root.cert, intermediate.cert, issuing.cert], [other_root.cert, root.cert]),
        clock=FakeClock())
    assert ca.chain == (issuing.cert, intermediate.cert, root.cert)
    assert ca.roots == (other_root.cert, root.cert)
    assert ca.sign(csr_for(), identity=ID, ttl=DAY).chain_pem == pem(issuing.cert, intermediate.cert, root.cert)


def test_from_cacerts_reads_rsa_pkcs1_key(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = name("rsa root")
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(T0 - DAY).not_valid_after(T0 + DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    d = tmp_path / "rsa"
    d.mkdir()
    (d / CA_CERT).write_bytes(pem(cert))
    (d / CA_KEY).write_bytes(key_pem(key))  # "BEGIN RSA PRIVATE KEY"
    (d / CERT_CHAIN).write_bytes(b"")
    (d / ROOT_CERT).write_bytes(pem(cert))
    ca = CertificateAuthority.from_cacerts(d, clock=FakeClock())
    issued = x509.load_pem_x509_certificate(ca.sign(csr_for(), identity=ID, ttl=DAY).cert_pem)
    issued.verify_directly_issued_by(cert)
    # no SubjectKeyIdentifier on this CA: the AKI comes from its public key
    assert ext(issued, x509.AuthorityKeyIdentifier).value.key_identifier == \
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest


@pytest.mark.parametrize("missing", [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN])
def test_cacerts_missing_file(cacerts: Path, missing: str) -> None:
    (cacerts / missing).unlink()
    with pytest.raises(CacertsError, match="missing") as err:
        CertificateAuthority.from_cacerts(cacerts, clock=FakeClock())
    assert err.value.file == missing
    assert str(err.value).startswith(f"{cacerts / missing}: ")


@pytest.mark.parametrize("broken", [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN])
def test_cacerts_garbage_pem(cacerts: Path, broken: str) -> None:
    (cacerts / broken).write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    with pytest.raises(CacertsError) as err:
        CertificateAuthority.from_cacerts(cacerts, clock=FakeClock())
    assert err.value.file == broken


def test_cacerts_empty_files(cacerts: Path) -> None:
    (cacerts / ROOT_CERT).write_bytes(b"\n")
    with pytest.raises(CacertsError, match="empty") as err:
        CertificateAuthority.from_cacerts(cacerts, clock=FakeClock())
    assert err.value.file == ROOT_CERT


def test_cacerts_key_mismatch(cacerts: Path) -> None:
    (cacerts / CA_KEY).write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(CacertsError, match=r"does not match the public key of ca-cert\.pem") as err:
        CertificateAuthority.from_cacerts(cacerts, clock=FakeClock())
    assert err.value.file == CA_KEY


def test_cacerts_encrypted_key(cacerts: Path, intermediate: Issued) -> None:
    (cacerts / CA_KEY).write_bytes(intermediate.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(CacertsError, match="unencrypted") as err:
        CertificateAuthority.from_cacerts(cacerts, clock=FakeClock())
    assert err.value.file == CA_KEY


def test_cacerts_two_certs_in_ca_cert(cacerts: Path, intermediate: Issued, root: Issued) -> None:
    (cacerts / CA_CERT).write_bytes(pem(intermediate.cert, root.cert))
    with pytest.raises(CacertsError, match="exactly one") as err:
        CertificateAuthority.from_cacerts(cacerts, clock=FakeClock())
    assert err.value.file == CA_CERT


@pytest.mark.parametrize(("ca", "key_cert_sign", "message"), [
    (False, True, "not a CA certificate"),
    (True, False, "keyCertSign"),
])
def test_cacerts_ca_cert_not_a_ca(tmp_path: Path, root: Issued, ca: bool, key_cert_sign: bool, message: str) -> None:
    signer = issue("workload", root, ca=ca, key_cert_sign=key_cert_sign)
    with pytest.raises(CacertsError, match=message) as err:
        CertificateAuthority.from_cacerts(lay_out(tmp_path, signer, [root.cert], [root.cert]), clock=FakeClock())
    assert err.value.file == CA_CERT


def test_cacerts_chain_gap(tmp_path: Path, root: Issued, intermediate: Issued) -> None:
    issuing = issue("issuing", intermediate)
    with pytest.raises(CacertsError, match=r"does not chain to root-cert\.pem.*CN=intermediate") as err:
        CertificateAuthority.from_cacerts(lay_out(tmp_path, issuing, [issuing.cert, root.cert], [root.cert]),
                                          clock=FakeClock())
    assert err.value.file == CERT_CHAIN


def test_cacerts_wrong_root(tmp_path: Path, root: Issued, intermediate: Issued) -> None:
    other_root = issue("other root")
    # the chain reaches its own root, which root-cert.pem does not hold
    with pytest.raises(CacertsError, match="self-signed") as err:
        CertificateAuthority.from_cacerts(lay_out(tmp_path / "a", intermediate, [root.cert], [other_root.cert]),
                                          clock=FakeClock())
    assert err.value.file == ROOT_CERT
    # root-cert.pem holds a root of the right name but another key (a regenerated root)
    impostor = issue("root")
    with pytest.raises(CacertsError, match=r"signature on CN=intermediate.*in root-cert\.pem") as err:
        CertificateAuthority.from_cacerts(lay_out(tmp_path / "b", intermediate, [], [impostor.cert]),
                                          clock=FakeClock())
    assert err.value.file == CA_CERT


def test_cacerts_tampered_intermediate(tmp_path: Path, root: Issued, intermediate: Issued) -> None:
    issuing = issue("issuing", intermediate)
    tampered = x509.load_pem_x509_certificate(flip_last_byte(pem(intermediate.cert)))
    with pytest.raises(CacertsError, match=r"signature on CN=intermediate.*in root-cert\.pem") as err:
        CertificateAuthority.from_cacerts(lay_out(tmp_path, issuing, [tampered], [root.cert]), clock=FakeClock())
    assert err.value.file == CERT_CHAIN


def test_cacerts_validity(tmp_path: Path, root: Issued) -> None:
    expired = issue("expired", root, not_after=T0 - DAY)
    with pytest.raises(CacertsError, match="expired") as err:
        CertificateAuthority.from_cacerts(lay_out(tmp_path / "a", expired, [], [root.cert]), clock=FakeClock())
    assert err.value.file == CA_CERT

    old_intermediate = issue("old intermediate", root, not_after=T0 - DAY)
    issuing = issue("issuing", old_intermediate)
    with pytest.raises(CacertsError, match=r"CN=old intermediate.*expired") as err:
        CertificateAuthority.from_cacerts(lay_out(tmp_path / "b", issuing, [old_intermediate.cert], [root.cert]),
                                          clock=FakeClock())
    assert err.value.file == CERT_CHAIN

    future = issue("future", root, not_before=T0 + DAY)
    with pytest.raises(CacertsError, match="not valid before") as err:
        CertificateAuthority.from_cacerts(lay_out(tmp_path / "c", future, [], [root.cert]), clock=FakeClock())
    assert err.value.file == CA_CERT


def test_cacerts_root_must_be_a_ca(tmp_path: Path) -> None:
    not_ca_root = issue("root", ca=False, key_cert_sign=True)
    signer = issue("intermediate", not_ca_root)
    with pytest.raises(CacertsError, match="not a CA") as err:
        CertificateAuthority.from_cacerts(lay_out(tmp_path, signer, [], [not_ca_root.cert]), clock=FakeClock())
    assert err.value.file == ROOT_CERT


# -- signing -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.self_signed(clock=FakeClock())


def test_sign_issues_an_istio_workload_cert(ca: CertificateAuthority) -> None:
    signed = ca.sign(csr_for(x509.UniformResourceIdentifier(str(ID))), identity=ID, ttl=DAY)
    cert = x509.load_pem_x509_certificate(signed.cert_pem)
    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject == x509.Name([])
    san = ext(cert, x509.SubjectAlternativeName)
    assert san.critical  # the subject is empty (RFC 5280 4.2.1.6)
    assert list(san.value) == [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/cart")]
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert (ku.value.digital_signature, ku.value.key_encipherment) == (True, True)
    assert not any((ku.value.key_cert_sign, ku.value.crl_sign, ku.value.content_commitment,
                    ku.value.data_encipherment, ku.value.key_agreement))
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                            ExtendedKeyUsageOID.CLIENT_AUTH]
    bc = ext(cert, x509.BasicConstraints)
    assert (bc.critical, bc.value.ca) == (True, False)
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == \
        ext(ca.cert, x509.SubjectKeyIdentifier).value.digest
    assert 0 < cert.serial_number < 2**128
    assert cert.not_valid_before_utc == T0 - timedelta(minutes=1)
    assert cert.not_valid_after_utc == signed.not_after == T0 + DAY
    assert signed.chain_pem == signed.root_pem == pem(ca.cert)


def test_sign_accepts_a_csr_without_san_and_rsa_keys(ca: CertificateAuthority) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signed = ca.sign(csr_for(key=rsa_key), identity=ID, ttl=DAY)
    cert = x509.load_pem_x509_certificate(signed.cert_pem)
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    assert ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier) == \
        [str(ID)]


def test_sign_with_an_rsa_ca() -> None:
    rsa_ca = CertificateAuthority.self_signed(clock=FakeClock(), key_type="rsa-2048")
    cert = x509.load_pem_x509_certificate(rsa_ca.sign(csr_for(), identity=ID, ttl=DAY).cert_pem)
    cert.verify_directly_issued_by(rsa_ca.cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


def test_serials_are_random(ca: CertificateAuthority) -> None:
    serials = {x509.load_pem_x509_certificate(ca.sign(csr_for(), identity=ID, ttl=DAY).cert_pem).serial_number
               for _ in range(5)}
    assert len(serials) == 5


def test_validity_capped_by_the_ca() -> None:
    clock = FakeClock()
    short = CertificateAuthority.self_signed(clock=clock, ttl=timedelta(hours=2))
    signed = short.sign(csr_for(), identity=ID, ttl=DAY)
    assert signed.not_after == T0 + timedelta(hours=2)
    clock.now = T0 + timedelta(hours=1, minutes=30)
    assert short.sign(csr_for(), identity=ID, ttl=timedelta(hours=1)).not_after == T0 + timedelta(hours=2)
    assert short.sign(csr_for(), identity=ID, ttl=timedelta(minutes=10)).not_after == clock.now + timedelta(minutes=10)
    clock.now = T0 + timedelta(hours=2)
    with pytest.raises(SigningError, match="expired"):
        short.sign(csr_for(), identity=ID, ttl=DAY)


def test_validity_capped_by_the_whole_chain(tmp_path: Path) -> None:
    short_root = issue("short root", not_after=T0 + timedelta(hours=3))
    long_intermediate = issue("long intermediate", short_root, not_after=T0 + 365 * DAY)
    ca = CertificateAuthority.from_cacerts(lay_out(tmp_path, long_intermediate, [], [short_root.cert]),
                                           clock=FakeClock())
    assert ca.sign(csr_for(), identity=ID, ttl=DAY).not_after == T0 + timedelta(hours=3)


@pytest.mark.parametrize(("ttl", "message"), [
    (timedelta(0), "not positive"),
    (timedelta(seconds=-1), "not positive"),
    (timedelta(days=91), "greater than the max allowed TTL"),
])
def test_sign_rejects_ttl(ca: CertificateAuthority, ttl: timedelta, message: str) -> None:
    with pytest.raises(SigningError, match=message):
        ca.sign(csr_for(), identity=ID, ttl=ttl)


def test_sign_rejects_a_foreign_trust_domain(ca: CertificateAuthority) -> None:
    foreign = SpiffeId("other.example", "shop", "cart")
    with pytest.raises(SigningError, match="outside this CA's trust domain"):
        ca.sign(csr_for(x509.UniformResourceIdentifier(str(foreign))), identity=foreign, ttl=DAY)


# -- CSR rejections ------------------------------------------------------------------------------

@pytest.mark.parametrize("garbage", [
    b"",
    b"hello",
    b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
])
def test_csr_garbage(ca: CertificateAuthority, garbage: bytes) -> None:
    with pytest.raises(SigningError, match="not a PEM-encoded PKCS #10 request"):
        ca.sign(garbage, identity=ID, ttl=DAY)


def test_csr_a_certificate_is_not_a_csr(ca: CertificateAuthority) -> None:
    with pytest.raises(SigningError, match="PKCS #10"):
        ca.sign(pem(ca.cert), identity=ID, ttl=DAY)


def test_csr_bad_signature(ca: CertificateAuthority) -> None:
    tampered = flip_last_byte(csr_for(x509.UniformResourceIdentifier(str(ID))))
    with pytest.raises(SigningError, match="signature does not verify"):
        ca.sign(tampered, identity=ID, ttl=DAY)


@pytest.mark.parametrize(("names", "shown"), [
    ([x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/admin")],
     "URI:spiffe://cluster.local/ns/shop/sa/admin"),
    ([x509.UniformResourceIdentifier(str(ID)), x509.DNSName("cart.shop.svc")], "DNS:cart.shop.svc"),
    ([x509.DNSName("cart.shop.svc")], "DNS:cart.shop.svc"),
    ([x509.UniformResourceIdentifier(str(ID)), x509.UniformResourceIdentifier(str(ID))], "URI:spiffe"),
])
def test_csr_wrong_san(ca: CertificateAuthority, names: list[x509.GeneralName], shown: str) -> None:
    with pytest.raises(SigningError, match=r"caller's identity is spiffe://cluster\.local/ns/shop/sa/cart$") as err:
        ca.sign(csr_for(*names), identity=ID, ttl=DAY)
    assert shown in str(err.value)


def test_csr_weak_keys(ca: CertificateAuthority) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 -- the CA must refuse it
    with pytest.raises(SigningError, match="1024 bits"):
        ca.sign(csr_for(key=weak), identity=ID, ttl=DAY)
    odd_curve = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(SigningError, match="secp256k1"):
        ca.sign(csr_for(key=odd_curve), identity=ID, ttl=DAY)
