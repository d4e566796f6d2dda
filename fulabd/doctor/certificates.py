"""
What the doctor says of a server's certificate: whose it is, how long it has
left, and what to do when this machine cannot verify it.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timezone

EXPIRY_WARNING_DAYS = 14

VERIFY_ADVICE = {
    9: "the certificate is not valid yet: check the server's clock (timedatectl)",
    18: "the certificate is self-signed: pass --cafile with it (or its CA) if you trust it",
    19: "the chain ends in a root this machine does not trust: pass --cafile with that root if it is yours",
    20: "the chain is incomplete or its issuer is not trusted: serve fullchain.pem (not cert.pem) with "
        "--tls-cert or nginx's ssl_certificate; for a private CA pass --cafile",
    21: "the chain is incomplete: serve fullchain.pem (not cert.pem) with --tls-cert or nginx's ssl_certificate",
}


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def certificate_names(certificate) -> list[str]:
    from cryptography import x509

    try:
        alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(name.value) for name in alternatives]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [attribute.value for attribute in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return names


def days_left(certificate) -> int:
    return (certificate.not_valid_after_utc - datetime.now(timezone.utc)).days
