"""The gateway API, child side (PROTOCOL.md §2-§3): what a connected registry asks its parent.

One `GatewayClient` talks to one parent with the sync token's Basic credentials, over the one
transport (transport.py: trust, proxies, timeouts). Every refusal the parent sends (its
OCI-style body) is raised as `GatewayError` with the parent's code and message; a parent that
cannot be reached at all is `ParentUnreachable` (code `PARENT_UNREACHABLE`), so callers can tell
"the parent said no" from "no parent answered".

Trust in the parent's certificate, in this order: the CA in `Layout.parent_ca_cert` (pinned at
activation, or copied there from `--ca-file`), else the system trust store. A connection string
with `ParentCertificateFingerprint` pins the certificate that anchors the parent's chain:
`pinned_anchor` fetches the parent's CA from the public `GET /gateway/v1/ca.crt` with
verification off for that one request (or, for a self-signed parent with no CA, takes the
certificate the handshake presents), compares its SHA-256 fingerprint and returns it; activation
stores it, and every later connection verifies the chain *and the host name* against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from appliance.auth.certificates import fingerprint as certificate_fingerprint
from appliance.control.parent import PARENT_UNREACHABLE, UNTRUSTED_PARENT, parent_of
from appliance.storage.store import Store
from appliance.transport import (
    Peer,
    PeerError,
    Transport,
    Unreachable,
    answered_without_tls,
    cannot_reach,
    first_error,
    json_object,
    reason,
    untrusted,
)
from appliance.transport import read_ca_file as transport_read_ca_file

# Every gateway answer is a small JSON document: a parent that takes 5 s to accept, or 5 s to
# send a byte once asked, is taken as unreachable (a sync run against a black hole then ends in
# about 5 s, not 15).
TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5, sock_read=5)

# The control layer's names for the transport's one error type: the parent refused (its code
# and message), or could not be talked to; or no answer came from it at all.
GatewayError = PeerError
ParentUnreachable = Unreachable


@dataclass(frozen=True)
class Settings:
    """What the parent sent for this connected registry, with its ETag."""

    body: dict[str, Any]
    etag: str | None


def parent_peer(endpoint: str) -> Peer:
    """The parent's gateway at `endpoint` (HOST:PORT), in the words of its errors."""
    return Peer(
        name=f"the parent at {endpoint}",
        unreachable=PARENT_UNREACHABLE,
        untrusted=UNTRUSTED_PARENT,
        trust_hint="give --ca-file, or a connection string with ParentCertificateFingerprint",
        plain_http_hint=(
            "serve it with TLS, or (a loopback parent, for development) use a connection "
            "string with ParentEndpointProtocol=http"
        ),
    )


def read_ca_file(path: Path) -> bytes:
    """The PEM certificates of a `--ca-file`, checked to parse; GatewayError otherwise."""
    try:
        return transport_read_ca_file(path)
    except ValueError as err:
        raise GatewayError(UNTRUSTED_PARENT, str(err)) from None


async def pinned_anchor(host: str, port: int, base_url: str, expected: str) -> bytes:
    """The PEM certificate whose fingerprint is `expected`: the parent's CA (from
    `/gateway/v1/ca.crt`) or, self-signed, its server certificate. GatewayError otherwise."""
    endpoint = base_url.split("://", 1)[1]
    peer = parent_peer(endpoint)
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    candidates: list[x509.Certificate] = []
    try:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.get(f"{base_url}/gateway/v1/ca.crt", ssl=insecure) as response,
        ):
            if response.status == 200:
                # Not PEM: fall back to the handshake's certificate below.
                with contextlib.suppress(ValueError):
                    candidates += x509.load_pem_x509_certificates(await response.read())
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=insecure, server_hostname=host),
            TIMEOUT.connect,
        )
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()
        candidates.append(x509.load_der_x509_certificate(der))
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        if answered_without_tls(err):
            raise untrusted(peer, err) from None
        raise cannot_reach(peer, endpoint, reason(err, TIMEOUT)) from None
    for certificate in candidates:
        if certificate_fingerprint(certificate) == expected:
            return certificate.public_bytes(serialization.Encoding.PEM)
    seen = ", ".join(certificate_fingerprint(c) for c in candidates)
    raise GatewayError(
        UNTRUSTED_PARENT,
        f"the parent at {endpoint} presents no certificate with fingerprint {expected} "
        f"(it presents {seen}): the connection string is for another parent, or someone is in "
        "between",
    )


class GatewayClient:
    """The gateway API of one parent, for one connected registry. Use as `async with`."""

    def __init__(
        self,
        base_url: str,
        registry_name: str,
        token: str,
        password: str,
        ca_pem: bytes | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.endpoint = self.base_url.split("://", 1)[1]
        self.registry_name = registry_name
        self._transport = Transport(
            self.base_url,
            parent_peer(self.endpoint),
            TIMEOUT,
            ca_pem,
            # Sent with every request (no 401 round trip first): an idle sync counts its requests.
            headers={"Authorization": aiohttp.encode_basic_auth(token, password)},
        )

    @property
    def requests(self) -> int:
        """Every request sent (a sync run reports them: an idle device must cost almost none)."""
        return self._transport.requests

    @classmethod
    def for_node(cls, store: Store) -> GatewayClient:
        """The client of an activated node: parent, credential and trust from its state."""
        parent = parent_of(store)
        return cls(
            parent.url, parent.registry_name, parent.token, parent.password, parent.ca_pem
        )

    async def __aenter__(self) -> GatewayClient:
        await self._transport.__aenter__()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._transport.__aexit__(kind, error, traceback)

    # -- the endpoints -------------------------------------------------------------------------

    async def activate(
        self, instance_id: str, version: str, login_server: str, hostname: str
    ) -> Settings:
        """Claim the registry for this instance; its settings. `ALREADY_ACTIVATED` when
        another instance holds it, `UNAUTHORIZED` for a wrong password."""
        body = {
            "instanceId": instance_id,
            "version": version,
            "loginServer": login_server,
            "hostname": hostname,
        }
        _, headers, data = await self._call("POST", "activate", body)
        return Settings(_json_object(data, self.endpoint), headers.get("ETag"))

    async def deactivate(self, instance_id: str) -> None:
        await self._call("POST", "deactivate", {"instanceId": instance_id})

    async def settings(self, etag: str | None = None) -> Settings | None:
        """The current settings, or None when they still match `etag` (304)."""
        headers = {"If-None-Match": etag} if etag else {}
        status, answer, data = await self._call("GET", "settings", headers=headers)
        if status == 304:
            return None
        return Settings(_json_object(data, self.endpoint), answer.get("ETag"))

    async def report_status(self, report: dict[str, Any]) -> None:
        await self._call("PUT", "status", report)

    async def changes(self, cursor: int | None, wait: float = 0) -> dict[str, Any]:
        """One page of the parent's change feed after `cursor` (PROTOCOL.md §3):
        `{cursor, reset, changes[{seq, repository, op, tag, digest, time}], more}`. With `wait`
        the parent holds the answer up to that many seconds for a change."""
        query = f"changes?cursor={cursor or 0}"
        if wait > 0:
            query += f"&wait={wait:g}"
        # The long poll must not be cut by the usual 15 s total.
        timeout = aiohttp.ClientTimeout(
            total=(TIMEOUT.total or 15) + wait,
            connect=TIMEOUT.connect,
            sock_read=(TIMEOUT.sock_read or 5) + wait,
        )
        _, _, data = await self._call("GET", query, timeout=timeout)
        answer = _json_object(data, self.endpoint)
        if not isinstance(answer.get("cursor"), int) or not isinstance(answer.get("changes"), list):
            raise GatewayError(
                "UNEXPECTED_RESPONSE", f"the parent at {self.endpoint} sent a malformed change feed"
            )
        return answer

    async def forward(
        self,
        method: str,
        registry: str,
        action: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, CIMultiDict[str], bytes]:
        """One call for `registry` (a descendant this node relays for, PROTOCOL.md §5), made
        with this node's credential; the parent's answer as it is, refusals included.
        ParentUnreachable when no parent answered."""
        sent = dict(headers or {})
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        return await self._request(method, registry, action, data=data, headers=sent)

    async def _call(
        self,
        method: str,
        action: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> tuple[int, CIMultiDict[str], bytes]:
        status, answer, data = await self._request(
            method, self.registry_name, action, body=body, headers=headers, timeout=timeout
        )
        if status >= 400:
            raise _refusal(status, data, self.endpoint, action)
        return status, answer, data

    async def _request(
        self,
        method: str,
        registry: str,
        action: str,
        body: dict[str, Any] | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> tuple[int, CIMultiDict[str], bytes]:
        url = f"{self.base_url}/gateway/v1/registries/{registry}/{action}"
        sent = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        payload = data
        return await self._transport.fetch(
            method, url, sent, (lambda: payload) if payload is not None else None, timeout=timeout
        )


def _json_object(data: bytes, endpoint: str) -> dict[str, Any]:
    value = json_object(data)
    if value is None:
        raise GatewayError("UNEXPECTED_RESPONSE", f"the parent at {endpoint} sent no JSON object")
    return value


def _refusal(status: int, data: bytes, endpoint: str, action: str) -> GatewayError:
    """The parent's first OCI-style error, or a description of what came back instead."""
    error = first_error(data)
    if error is None:
        return GatewayError(
            "UNEXPECTED_RESPONSE",
            f"the parent at {endpoint} answered {status} to {action} without an error body: is "
            "it a connected-registry gateway?",
            status,
        )
    code, message = error
    return GatewayError(code, message, status)
