"""The connection string a device activates with (PROTOCOL.md §1).

`;`-separated `Key=Value` pairs, any order, keys case-sensitive, each at most once:
`ConnectedRegistryName`, `SyncTokenName`, `SyncTokenPassword`, `ParentGatewayEndpoint`,
`ParentEndpointProtocol` (required) and `ParentCertificateFingerprint` (ours, optional).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

REQUIRED = (
    "ConnectedRegistryName",
    "SyncTokenName",
    "SyncTokenPassword",
    "ParentGatewayEndpoint",
    "ParentEndpointProtocol",
)
OPTIONAL = ("ParentCertificateFingerprint",)
KEYS = REQUIRED + OPTIONAL

REGISTRY_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9]{4,49}")
TOKEN_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9-]{4,49}")
PASSWORD = re.compile(r"[A-Za-z0-9_-]{16,200}")
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# ASCII digits only: str.isdigit() also takes '²', which int() refuses.
PORT = re.compile(r"[0-9]{1,5}")


class ConnectionStringError(ValueError):
    """A malformed connection string; the message names the field."""


@dataclass(frozen=True)
class ConnectionString:
    registry_name: str
    token_name: str
    password: str
    host: str
    port: int
    protocol: str
    fingerprint: str | None = None

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.protocol}://{self.endpoint}"

    def __str__(self) -> str:
        pairs = [
            ("ConnectedRegistryName", self.registry_name),
            ("SyncTokenName", self.token_name),
            ("SyncTokenPassword", self.password),
            ("ParentGatewayEndpoint", self.endpoint),
            ("ParentEndpointProtocol", self.protocol),
        ]
        if self.fingerprint:
            pairs.append(("ParentCertificateFingerprint", self.fingerprint))
        return ";".join(f"{k}={v}" for k, v in pairs)

    def redacted(self) -> str:
        """For logs and prompts: everything but the password."""
        return str(self).replace(self.password, "***")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_number(text: str) -> int | None:
    """The TCP port `text` names (ASCII digits, 1-65535); None for anything else."""
    if not PORT.fullmatch(text) or not 0 < int(text) < 65536:
        return None
    return int(text)


def parse_endpoint(text: str) -> tuple[str, int]:
    """`host:port` or `[ipv6]:port`; a port is required (443 may be written)."""
    shown = repr(text if len(text) <= 80 else f"{text[:80]}…")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConnectionStringError(
                f"ParentGatewayEndpoint {shown}: the host is not an IPv6 address"
            ) from None
    elif not sep or not (HOSTNAME.fullmatch(host) or _is_ipv4(host)):
        raise ConnectionStringError(
            f"ParentGatewayEndpoint {shown} must be HOST:PORT (a DNS name or IP address and a "
            "port)"
        )
    number = port_number(port)
    if number is None:
        raise ConnectionStringError(
            f"ParentGatewayEndpoint {shown}: the port must be a number from 1 to 65535"
        )
    return host, number


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def parse(text: str) -> ConnectionString:
    """Validate field by field; the first problem found is raised, naming its field."""
    text = text.strip()
    if not text:
        raise ConnectionStringError("the connection string is empty")
    fields: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise ConnectionStringError(f"{part[:40]!r} is not Key=Value")
        if key not in KEYS:
            raise ConnectionStringError(f"unknown field {key!r}; the fields are {', '.join(KEYS)}")
        if key in fields:
            raise ConnectionStringError(f"{key} is given twice")
        fields[key] = value.strip()
    for key in REQUIRED:
        if not fields.get(key):
            raise ConnectionStringError(f"{key} is missing")
    name = fields["ConnectedRegistryName"]
    if not REGISTRY_NAME.fullmatch(name):
        raise ConnectionStringError(
            f"ConnectedRegistryName {name!r} must be 5-50 letters and digits, starting with a "
            "letter"
        )
    token = fields["SyncTokenName"]
    if not TOKEN_NAME.fullmatch(token):
        raise ConnectionStringError(
            f"SyncTokenName {token!r} must be 5-50 letters, digits and '-', starting with a letter"
        )
    if not PASSWORD.fullmatch(fields["SyncTokenPassword"]):
        raise ConnectionStringError(
            "SyncTokenPassword is not a password this registry generates (16 or more of "
            "A-Z a-z 0-9 _ -)"
        )
    host, port = parse_endpoint(fields["ParentGatewayEndpoint"])
    protocol = fields["ParentEndpointProtocol"]
    if protocol not in ("https", "http"):
        raise ConnectionStringError(
            f"ParentEndpointProtocol {protocol!r} must be https (or http for a loopback parent)"
        )
    if protocol == "http" and not is_loopback(host):
        raise ConnectionStringError(
            "ParentEndpointProtocol http is only allowed for a loopback parent; use https"
        )
    fingerprint = fields.get("ParentCertificateFingerprint")
    if fingerprint is not None:
        fingerprint = fingerprint.lower()
        if not FINGERPRINT.fullmatch(fingerprint):
            raise ConnectionStringError(
                "ParentCertificateFingerprint must be sha256: and 64 hex digits"
            )
        if protocol == "http":
            raise ConnectionStringError(
                "ParentCertificateFingerprint makes no sense with ParentEndpointProtocol http"
            )
    return ConnectionString(
        name, token, fields["SyncTokenPassword"], host, port, protocol, fingerprint
    )
