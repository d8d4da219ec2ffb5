"""Nubis's own certificate authority, for the hosts: their libvirt TLS (migration streams between
hosts, issue 19) is authenticated by certificates it signs, and by no other.

The CA is made on first use: an ECDSA P-256 key and a self-signed certificate valid ten years, in
``<NUBIS_DATA_DIR>/keys/``. Its private key is never written in the clear: the file holds it
wrapped by the master key (security.keys), so a copy of the data directory without the master
key (a KMS, or the master key file kept apart) signs nothing. A host sends a certificate signing
request made with its own key (which never leaves the host); ``host_certificate`` checks the
request's signature and signs a certificate for the host's name and addresses, for both server
and client use (libvirt's TLS authenticates both ends of a migration), valid a year.
"""

from __future__ import annotations

import datetime
import ipaddress
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings

from core.files import write_atomically
from security.keys import KeyUnavailable, provider

CA_DAYS = 3650
HOST_DAYS = 365
CONTEXT = "ca:nubis"
_lock = threading.Lock()


def _dir() -> Path:
    return Path(settings.DATA_DIR) / "keys"


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Nubis"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


# A CA key signs certificates (and revocation lists), nothing else.
_CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _make() -> None:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("Nubis host CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    raw = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    directory = _dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The wrapped key first: a certificate without its key would be a CA that cannot sign.
    write_atomically(directory / "ca.key.wrapped", provider().wrap(raw, CONTEXT).encode(), 0o600)
    write_atomically(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)


def ca_certificate() -> x509.Certificate:
    """The CA's certificate (made on first use): what hosts trust."""
    path = _dir() / "ca.pem"
    with _lock:
        if not path.exists() or not (_dir() / "ca.key.wrapped").exists():
            _make()
    return x509.load_pem_x509_certificate(path.read_bytes())


def ca_pem() -> bytes:
    return ca_certificate().public_bytes(serialization.Encoding.PEM)


def _ca_key() -> ec.EllipticCurvePrivateKey:
    ca_certificate()
    wrapped = (_dir() / "ca.key.wrapped").read_text()
    key = serialization.load_der_private_key(provider().unwrap(wrapped, CONTEXT), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyUnavailable("the CA key is not an EC key")
    return key


def host_certificate(csr_pem: bytes, host_name: str, addresses: list[str]) -> bytes:
    """Sign a host's certificate from its signing request: its name and addresses as the subject
    alternative names, for TLS server and client use. ValueError names what is wrong with the
    request (not a CSR, a bad signature, a bad address)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise ValueError("csr: not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise ValueError("csr: its signature does not match its key")
    names: list[x509.GeneralName] = [x509.DNSName(host_name)]
    for address in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            raise ValueError(f"addresses: {address!r} is not an IP address") from None
    ca = ca_certificate()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host_name))
        .issuer_name(ca.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=HOST_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
        .sign(_ca_key(), hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
