"""The gateway API, child side (PROTOCOL.md §2-§3): what a connected registry asks its parent.

One `GatewayClient` talks to one parent with the sync token's Basic credentials. Every refusal
the parent sends (its OCI-style body) is raised as `GatewayError` with the parent's code and
message; a parent that cannot be reached at all is `ParentUnreachable` (code
`PARENT_UNREACHABLE`), so callers can tell "the parent said no" from "no parent answered".

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
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from appliance.auth.certificates import client_trust
from appliance.auth.certificates import fingerprint as certificate_fingerprint
from appliance.control.node import NodeState
from appliance.storage.store import Store
from appliance.sync.client import PLAIN_HTTP, answered_without_tls, environment_proxy, tls_reason

# Every gateway answer is a small JSON document: a parent that takes 5 s to accept, or 5 s to
# send a byte once asked, is taken as unreachable (a sync run against a black hole then ends in
# about 5 s, not 15).
TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5, sock_read=5)
PARENT_UNREACHABLE = "PARENT_UNREACHABLE"
UNTRUSTED_PARENT = "UNTRUSTED_PARENT"


class GatewayError(Exception):
    """The parent refused (its code and message), or could not be talked to."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class ParentUnreachable(GatewayError):
    """No answer from the parent: connection refused, DNS, timeout."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(PARENT_UNREACHABLE, f"cannot reach the parent at {endpoint}: {reason}")
        self.endpoint = endpoint
        self.reason = reason


@dataclass(frozen=True)
class Settings:
    """What the parent sent for this connected registry, with its ETag."""

    body: dict[str, Any]
    etag: str | None


def ssl_context(ca_pem: bytes | None = None) -> ssl.SSLContext:
    """Verify against `ca_pem` (PEM, one or more certificates), or the system store if None."""
    try:
        return client_trust(ca_pem)
    except ValueError as err:
        raise GatewayError(UNTRUSTED_PARENT, str(err)) from None


def read_ca_file(path: Path) -> bytes:
    """The PEM certificates of a `--ca-file`, checked to parse; GatewayError otherwise."""
    try:
        pem = path.read_bytes()
        x509.load_pem_x509_certificates(pem)
    except OSError as err:
        message = f"cannot read CA file {path}: {err.strerror}"
        raise GatewayError(UNTRUSTED_PARENT, message) from None
    except ValueError:
        raise GatewayError(UNTRUSTED_PARENT, f"{path} holds no PEM certificate") from None
    return pem


def _reason(err: BaseException) -> str:
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return f"no connection within {TIMEOUT.connect:.0f} s"
    if isinstance(err, aiohttp.SocketTimeoutError):
        return f"no answer within {TIMEOUT.sock_read:.0f} s"
    if isinstance(err, TimeoutError):
        return f"no answer within {TIMEOUT.total:.0f} s"
    if isinstance(err, aiohttp.ClientConnectorError):
        # asyncio's "Connect call failed (addr)" says less than the errno it carries.
        if err.os_error.errno and err.os_error.errno > 0 and "Connect call" in str(err.strerror):
            return os.strerror(err.os_error.errno)
        return err.strerror or str(err.os_error) or type(err).__name__
    return str(err) or type(err).__name__


def _untrusted(endpoint: str, err: BaseException) -> GatewayError:
    if answered_without_tls(err):
        return GatewayError(
            PLAIN_HTTP,
            f"the parent at {endpoint} answers in plain HTTP, not HTTPS: serve it with TLS, or "
            "(a loopback parent, for development) use a connection string with "
            "ParentEndpointProtocol=http",
        )
    return GatewayError(
        UNTRUSTED_PARENT,
        f"the certificate of the parent at {endpoint} is not trusted ({tls_reason(err)}); "
        "give --ca-file, or a connection string with ParentCertificateFingerprint",
    )


async def pinned_anchor(host: str, port: int, base_url: str, expected: str) -> bytes:
    """The PEM certificate whose fingerprint is `expected`: the parent's CA (from
    `/gateway/v1/ca.crt`) or, self-signed, its server certificate. GatewayError otherwise."""
    endpoint = base_url.split("://", 1)[1]
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
            raise _untrusted(endpoint, err) from None
        raise ParentUnreachable(endpoint, _reason(err)) from None
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
        self._authorization = aiohttp.encode_basic_auth(token, password)
        self._ssl: ssl.SSLContext | bool = (
            ssl_context(ca_pem) if self.base_url.startswith("https://") else False
        )
        self._session: aiohttp.ClientSession | None = None
        # The site's proxy, as the sync client uses it for /v2/ (HTTPS_PROXY, NO_PROXY).
        self._proxy = environment_proxy(self.base_url)
        # Every request sent (a sync run reports them: an idle device must cost almost none).
        self.requests = 0

    @classmethod
    def for_node(cls, store: Store) -> GatewayClient:
        """The client of an activated node: parent, credential and trust from its state."""
        state = NodeState(store)
        endpoint, protocol = state.get("parent_endpoint"), state.get("parent_protocol")
        credential = state.sync_credential()
        name = state.get("name")
        if not endpoint or not protocol or credential is None or not name:
            raise GatewayError("NOT_ACTIVATED", "this node is not an activated connected registry")
        anchor = store.layout.parent_ca_cert
        return cls(
            f"{protocol}://{endpoint}",
            name,
            credential.token,
            credential.password,
            anchor.read_bytes() if anchor.exists() else None,
        )

    async def __aenter__(self) -> GatewayClient:
        # Sent with every request (no 401 round trip first): an idle sync counts its requests.
        self._session = aiohttp.ClientSession(
            timeout=TIMEOUT, headers={"Authorization": self._authorization}
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        if self._session is None:
            raise RuntimeError("use GatewayClient as `async with`")
        url = f"{self.base_url}/gateway/v1/registries/{registry}/{action}"
        self.requests += 1
        try:
            async with self._session.request(
                method,
                url,
                json=body,
                data=data,
                headers=headers,
                ssl=self._ssl,
                timeout=timeout or TIMEOUT,
                proxy=self._proxy[0],
                proxy_auth=self._proxy[1],
            ) as response:
                answer_data = await response.read()
                status, answer = response.status, response.headers.copy()
        except aiohttp.ClientConnectorCertificateError as err:
            raise _untrusted(self.endpoint, err.certificate_error) from None
        except aiohttp.ClientSSLError as err:
            raise _untrusted(self.endpoint, err) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise ParentUnreachable(self.endpoint, _reason(err)) from None
        return status, answer, answer_data


def _json_object(data: bytes, endpoint: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise GatewayError("UNEXPECTED_RESPONSE", f"the parent at {endpoint} sent no JSON object")
    return value


def _refusal(status: int, data: bytes, endpoint: str, action: str) -> GatewayError:
    """The parent's first OCI-style error, or a description of what came back instead."""
    try:
        error = json.loads(data)["errors"][0]
        return GatewayError(str(error["code"]), str(error.get("message", "")), status)
    except (ValueError, KeyError, IndexError, TypeError):
        return GatewayError(
            "UNEXPECTED_RESPONSE",
            f"the parent at {endpoint} answered {status} to {action} without an error body: is "
            "it a connected-registry gateway?",
            status,
        )
