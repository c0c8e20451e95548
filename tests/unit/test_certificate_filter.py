"""certificate_not_after: the gateway certificate's expiry, as Prometheus is told it."""

from __future__ import annotations

import datetime

import pytest
from ansible.errors import AnsibleFilterError
from certificate import certificate_not_after
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def pem(days: int, name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(START).not_valid_after(START + datetime.timedelta(days=days))
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_the_first_certificate_of_a_chain_is_the_one_that_counts():
    leaf, ca = pem(90, "gateway.example.internal"), pem(3650, "Site CA")
    expected = int((START + datetime.timedelta(days=90)).timestamp())
    assert certificate_not_after(leaf + ca) == expected
    assert certificate_not_after(leaf) == expected


@pytest.mark.parametrize("bad", ["", "   ", "-----BEGIN CERTIFICATE-----\nAAAA\n",
                                 "not a certificate", "é" * 10, "x" * (2 * 1024 * 1024), None])
def test_anything_else_is_refused_with_a_reason(bad):
    with pytest.raises(AnsibleFilterError):
        certificate_not_after(bad)
