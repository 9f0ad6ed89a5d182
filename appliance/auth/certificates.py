"""A node's own small certificate authority, for HTTPS without a public CA.

`issue` makes (or reuses) a CA and signs a server certificate for the names and addresses
clients dial. The CA is kept: re-issuing for new hosts signs a new server certificate with the
same CA, so clients that already trust `ca.crt` keep working. Private keys are written 0600 from
the moment the file exists; certificates 0644. Where the files go is `Layout`'s business.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.storage.files import write_file
from appliance.storage.layout import Layout

CA_VALIDITY = timedelta(days=3650)
# Apple's TLS stack refuses server certificates valid for longer than 825 days.
SERVER_VALIDITY = timedelta(days=825)
# A client whose clock is a little behind must not see a certificate "not yet valid".
CLOCK_SKEW = timedelta(minutes=5)
# X.509's upper bound for a commonName; longer hosts go in subjectAltName only.
_COMMON_NAME_MAX = 64

Host = ipaddress.IPv4Address | ipaddress.IPv6Address | str
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertificateError(Exception):
    """A certificate problem, stated in one line that says what to do."""


@dataclass(frozen=True)
class IssuedCertificates:
    """What `issue` wrote, for the caller to tell the operator."""

    hosts: tuple[Host, ...]
    ca_cert: Path
    ca_fingerprint: str
    ca_reused: bool
    server_cert: Path
    server_key: Path
    not_after: datetime


def parse_host(text: str) -> Host:
    """An IP literal or a DNS name (a leading `*.` label allowed); ValueError otherwise.

    DNS names come back lower-cased. Names must be ASCII (IDNA A-labels), as subjectAltName
    requires.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        # A zone index (fe80::1%eth0) has no place in a certificate.
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ValueError(f"{text!r}: an IP address in a certificate has no zone index")
        return address
    name = text.lower()
    labels = name.split(".")
    wildcard = labels[0] == "*" and len(labels) > 2
    checked = labels[1:] if wildcard else labels
    if (
        len(name) > 253
        or not all(_is_dns_label(label) for label in checked)
        # An all-numeric last label is a mistyped IP address (10.0.0.256), not a name.
        or checked[-1].isdigit()
    ):
        raise ValueError(f"{text!r} is not an IP address or a DNS name")
    return name


def _is_dns_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and label.isascii()
        and all(c.isalnum() or c == "-" for c in label)
        and not label.startswith("-")
        and not label.endswith("-")
    )


def fingerprint(certificate: x509.Certificate) -> str:
    """`sha256:<hex>` of the certificate's DER bytes, as connection strings carry it."""
    return "sha256:" + certificate.fingerprint(hashes.SHA256()).hex()


def ca_fingerprint(layout: Layout) -> str:
    """The fingerprint of the node's CA certificate; CertificateError if there is none."""
    try:
        return fingerprint(x509.load_pem_x509_certificate(layout.tls_ca_cert.read_bytes()))
    except (OSError, ValueError) as err:
        raise CertificateError(
            f"cannot read the CA certificate {layout.tls_ca_cert}: {err}"
        ) from None


def issue(
    layout: Layout, hosts: list[Host], new_ca: bool = False, now: datetime | None = None
) -> IssuedCertificates:
    """Sign a new server certificate and key for `hosts` with the node's CA, making the CA
    first if there is none (or if `new_ca`). Replaces the previous server certificate."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host")
    now = now or datetime.now(UTC)
    layout.root.mkdir(parents=True, exist_ok=True)
    owner = _owner(layout.root)
    for folder, mode in ((layout.secrets, 0o700), (layout.tls, 0o755)):
        if not folder.is_dir():
            folder.mkdir(mode=mode, parents=True, exist_ok=True)
            if owner:
                os.chown(folder, *owner)
    existing = None if new_ca else load_ca(layout, now)
    if existing is None:
        ca_key, ca_cert = _make_ca(now)
        # Key before certificate: a crash in between leaves a CA that load_ca rejects loudly.
        _write_private(layout.tls_ca_key, _pem_key(ca_key), owner)
        _write_public(layout.tls_ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), owner)
    else:
        ca_key, ca_cert = existing
    server_key, server_cert = _make_server(hosts, ca_key, ca_cert, now)
    _write_private(layout.tls_server_key, _pem_key(server_key), owner)
    _write_public(
        layout.tls_server_cert, server_cert.public_bytes(serialization.Encoding.PEM), owner
    )
    return IssuedCertificates(
        hosts=tuple(hosts),
        ca_cert=layout.tls_ca_cert,
        ca_fingerprint=fingerprint(ca_cert),
        ca_reused=existing is not None,
        server_cert=layout.tls_server_cert,
        server_key=layout.tls_server_key,
        not_after=server_cert.not_valid_after_utc,
    )


def load_ca(layout: Layout, now: datetime) -> tuple[SigningKey, x509.Certificate] | None:
    """The node's CA key and certificate, None if it has none; CertificateError if what is
    there cannot sign (half missing, mismatched, not a CA, expired)."""
    cert_path, key_path = layout.tls_ca_cert, layout.tls_ca_key
    if not cert_path.exists() and not key_path.exists():
        return None
    for missing, present in ((cert_path, key_path), (key_path, cert_path)):
        if not missing.exists():
            raise CertificateError(
                f"{missing} is missing but {present} exists: restore it, or give --new-ca "
                "(every client must then trust the new CA)"
            )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise CertificateError(f"cannot read the CA in {cert_path} and {key_path}: {err}") from None
    if not isinstance(key, SigningKey):
        raise CertificateError(f"{key_path} is not an EC or RSA key: give --new-ca")
    if key.public_key() != cert.public_key():
        raise CertificateError(f"{key_path} is not the key of {cert_path}: give --new-ca")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertificateError(f"{cert_path} is not a CA certificate: give --new-ca")
    if cert.not_valid_after_utc <= now + timedelta(days=1):
        raise CertificateError(
            f"the CA {cert_path} expires {cert.not_valid_after_utc:%Y-%m-%d}: give --new-ca "
            "(every client must then trust the new CA)"
        )
    return key, cert


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: every TLS client speaks it, and it is fast to make on a small device.
    return ec.generate_private_key(ec.SECP256R1())


def _make_ca(now: datetime) -> tuple[SigningKey, x509.Certificate]:
    key = _new_key()
    # A random suffix tells the CAs of different nodes apart in a client's trust store.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "connected-registry"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"connected-registry CA {secrets.token_hex(4)}"
            ),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        # pathlen 0: this CA signs server certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_server(
    hosts: list[Host], ca_key: SigningKey, ca_cert: x509.Certificate, now: datetime
) -> tuple[SigningKey, x509.Certificate]:
    key = _new_key()
    names: list[x509.GeneralName] = [
        x509.DNSName(host) if isinstance(host, str) else x509.IPAddress(host) for host in hosts
    ]
    first = str(hosts[0])
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, first)] if len(first) <= _COMMON_NAME_MAX else []
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        # Never outlive the CA: clients would reject the chain from that day on anyway.
        .not_valid_after(min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey)),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # RFC 5280: with an empty subject, subjectAltName must be critical.
        .add_extension(x509.SubjectAlternativeName(names), critical=not subject)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _key_usage(
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem_key(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _owner(root: Path) -> tuple[int, int] | None:
    """Whom new files must belong to: run as root on a device, the service user owns the data
    directory and could not read a root-owned 0600 key."""
    if os.geteuid() != 0:
        return None
    info = root.stat()
    return info.st_uid, info.st_gid


def _write_private(path: Path, data: bytes, owner: tuple[int, int] | None) -> None:
    write_file(path, data, 0o600, owner)


def _write_public(path: Path, data: bytes, owner: tuple[int, int] | None) -> None:
    write_file(path, data, 0o644, owner)
