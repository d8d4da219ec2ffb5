"""Nubis's host CA: made once, its private key only ever on disk wrapped by the master key; a host's
signing request becomes a certificate for its name and addresses that verifies against the CA
(server and client use) and against no other; bad requests are refused, naming what is wrong."""

from __future__ import annotations

import base64
import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from security import ca
from security.keys import KeyUnavailable, provider


@pytest.fixture
def data_dir(tmp_path: Path, settings: Any) -> Iterator[Path]:
    settings.DATA_DIR = tmp_path
    provider.cache_clear()
    yield tmp_path
    provider.cache_clear()


def csr_for(
    name: str, key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return key, request.public_bytes(serialization.Encoding.PEM)


def verifier(root: x509.Certificate, kind: str) -> Any:
    store = verification.Store([root])
    builder = verification.PolicyBuilder().store(store).time(datetime.datetime.now(datetime.UTC))
    if kind == "server":
        return builder.build_server_verifier(x509.IPAddress(ipaddress.ip_address("10.99.0.7")))
    return builder.build_client_verifier()


def test_the_ca_is_made_once_and_its_key_is_only_stored_wrapped(data_dir: Path) -> None:
    first = ca.ca_certificate()
    assert ca.ca_certificate().serial_number == first.serial_number  # made once
    assert first.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    keys = data_dir / "keys"
    wrapped = (keys / "ca.key.wrapped").read_text()
    assert wrapped.startswith("v1:m1:")
    assert "PRIVATE KEY" not in wrapped
    assert (keys / "ca.key.wrapped").stat().st_mode & 0o777 == 0o600
    # Without the master key that wrapped it, the CA signs nothing.
    (keys / "master.json").unlink()
    provider.cache_clear()
    with pytest.raises(KeyUnavailable):
        ca.host_certificate(csr_for("h1")[1], "h1", ["10.99.0.7"])


def test_a_host_certificate_verifies_against_the_ca_for_both_ends_and_against_no_other(
    data_dir: Path,
) -> None:
    key, request = csr_for("h1")
    pem = ca.host_certificate(request, "h1", ["10.99.0.7"])
    cert = x509.load_pem_x509_certificate(pem)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)  # the host's own
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["h1"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.99.0.7")]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    root = ca.ca_certificate()
    verifier(root, "server").verify(cert, [])
    verifier(root, "client").verify(cert, [])
    # Another CA's trust store does not accept it.
    other_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other CA")])
    other = (
        x509.CertificateBuilder()
        .subject_name(other_name)
        .issuer_name(other_name)
        .public_key(other_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(other_key, hashes.SHA256())
    )
    with pytest.raises(verification.VerificationError):
        verifier(other, "server").verify(cert, [])


def test_bad_requests_are_refused_naming_what_is_wrong(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="csr: not a PEM"):
        ca.host_certificate(b"hello", "h1", [])
    _key, request = csr_for("h1")
    with pytest.raises(ValueError, match="addresses: 'not-an-ip'"):
        ca.host_certificate(request, "h1", ["not-an-ip"])
    # A request whose signature does not match its key (its signed bytes altered).
    raw = x509.load_pem_x509_csr(request).public_bytes(serialization.Encoding.DER)
    forged = raw.replace(b"h1", b"h2", 1)
    forged_pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(forged)
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(ValueError, match="csr: its signature"):
        ca.host_certificate(forged_pem, "h2", [])


def test_the_keys_command_prints_the_ca(data_dir: Path) -> None:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("keys", "ca", stdout=out)
    assert x509.load_pem_x509_certificate(out.getvalue().encode()) == ca.ca_certificate()
