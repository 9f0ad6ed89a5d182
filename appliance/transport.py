"""How every outgoing HTTP call is sent: to an upstream registry (sync/client.py), to our
parent's gateway (control/gateway_client.py) and to a root's management API
(control/management_client.py).

What a caller may rely on:
- Trust: HTTPS verified against the given CA (PEM) or the system store.
- Proxies: `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` honoured, looked up once per host.
- Timeouts: the client's own (`timeout`), and with `first_byte` a bound on how long a request
  without a body may wait for the response's headers, connecting included.
- Retries: with `tries` > 1, connection errors, timeouts and the `retry_statuses` answers are
  retried with exponential backoff and jitter, a bounded number of times.
- Errors: one type, `PeerError(code, message, status)`, worded for the `Peer` being talked to;
  `Unreachable` when no usable answer came; `first_error` reads a peer's OCI-style error body.

It sits beside `bodies.py`, outside control/ and sync/, because both use it and it knows
nothing of either: it depends on aiohttp and the standard library only.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from multidict import CIMultiDict
from yarl import URL

BACKOFF_BASE = 0.25
BACKOFF_MAX = 8.0
PLAIN_HTTP = "PLAIN_HTTP"


class PeerError(Exception):
    """The peer refused (its code, message and HTTP status), answered nonsense, or could not be
    talked to: the one error of every outgoing call."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class Unreachable(PeerError):
    """No usable answer: refused connections, DNS, timeouts, or (retried) 5xx. `endpoint` and
    `reason` say which peer and why, for callers that word it themselves."""

    def __init__(self, code: str, message: str, endpoint: str, reason: str) -> None:
        super().__init__(code, message)
        self.endpoint = endpoint
        self.reason = reason


@dataclass(frozen=True)
class Peer:
    """Who a transport talks to, in the words its errors use."""

    # "registry.example:443", "the parent at 10.0.0.1:443", "the root at https://…"
    name: str
    # The codes of "no answer" and of "its certificate is not trusted".
    unreachable: str
    untrusted: str
    # What to do about an untrusted certificate, and about a peer answering in plain HTTP.
    trust_hint: str
    plain_http_hint: str


def client_trust(ca_pem: bytes | None = None) -> ssl.SSLContext:
    """A client's TLS context verifying against `ca_pem` (PEM, one or more certificates), or the
    system store when None. ValueError for PEM that holds no usable certificate."""
    if ca_pem is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError) as err:
        raise ValueError(f"not a usable PEM CA certificate: {err}") from None


def read_ca_file(path: Path) -> bytes:
    """The PEM certificates of a CA file, checked to parse; ValueError (one line) otherwise."""
    try:
        pem = path.read_bytes()
        x509.load_pem_x509_certificates(pem)
    except OSError as err:
        raise ValueError(f"cannot read CA file {path}: {err.strerror}") from None
    except ValueError:
        raise ValueError(f"{path} holds no PEM certificate") from None
    return pem


# A proxy URL and its credentials, or (None, None): no proxy.
Proxy = tuple[str | None, aiohttp.BasicAuth | None]


def environment_proxy(url: str) -> Proxy:
    """The environment's proxy for `url` (HTTPS_PROXY, HTTP_PROXY, with NO_PROXY, as the
    standard library reads them) and its credentials; (None, None) to connect directly."""
    parts = urlsplit(url)
    found = urllib.request.getproxies().get(parts.scheme)
    if not found or (parts.hostname and urllib.request.proxy_bypass(parts.hostname)):
        return None, None
    proxy = URL(found)
    if proxy.user is None:
        return str(proxy), None
    return str(proxy.with_user(None)), aiohttp.BasicAuth(proxy.user, proxy.password or "")


def first_error(data: bytes) -> tuple[str, str] | None:
    """The code and message of an OCI-style error body's first error; None if it is not one."""
    try:
        error = json.loads(data)["errors"][0]
        return str(error["code"]), str(error.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def json_object(data: bytes) -> dict[str, Any] | None:
    """The JSON object `data` holds; None when it holds anything else."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def json_answer(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The JSON object a response carries; PeerError `UNEXPECTED_RESPONSE` otherwise."""
    value = json_object(await response.read())
    if value is None:
        raise PeerError("UNEXPECTED_RESPONSE", f"{response.url} sent no JSON object")
    return value


def answered_without_tls(err: BaseException) -> bool:
    """Whether a TLS handshake failed because the other end does not speak TLS: a plain-HTTP
    server's answer read as a TLS record."""
    cause = err.os_error if isinstance(err, aiohttp.ClientConnectorError) else err
    return isinstance(cause, ssl.SSLError) and cause.reason == "WRONG_VERSION_NUMBER"


def untrusted(peer: Peer, err: BaseException) -> PeerError:
    """A failed TLS handshake as the peer's error: plain HTTP, or a certificate not trusted."""
    if answered_without_tls(err):
        return PeerError(
            PLAIN_HTTP, f"{peer.name} answers in plain HTTP, not HTTPS: {peer.plain_http_hint}"
        )
    # The TLS failure itself, without aiohttp's wrapping (which prints the SSL context).
    cause = err.os_error if isinstance(err, aiohttp.ClientConnectorError) else err
    reason = str(cause) or type(cause).__name__
    return PeerError(
        peer.untrusted,
        f"the certificate of {peer.name} is not trusted ({reason}); {peer.trust_hint}",
    )


def reason(
    err: BaseException, timeout: aiohttp.ClientTimeout, first_byte: float | None = None
) -> str:
    """Why a request got no answer, in a few words."""
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return f"no connection within {timeout.sock_connect or timeout.connect or 0:g} s"
    if isinstance(err, aiohttp.SocketTimeoutError):
        return f"no answer within {timeout.sock_read or 0:g} s"
    if isinstance(err, TimeoutError):
        bound = first_byte or timeout.total
        return f"no answer within {bound:g} s" if bound else "timed out"
    if isinstance(err, aiohttp.ClientConnectorError):
        # asyncio's "Connect call failed (addr)" says less than the errno it carries.
        if err.os_error.errno and err.os_error.errno > 0 and "Connect call" in str(err.strerror):
            return os.strerror(err.os_error.errno)
        return err.strerror or str(err.os_error) or type(err).__name__
    return str(err) or type(err).__name__


def cannot_reach(peer: Peer, endpoint: str, why: str) -> Unreachable:
    """No answer from `peer` at `endpoint` (HOST:PORT), `why` in a few words."""
    return Unreachable(peer.unreachable, f"cannot reach {peer.name}: {why}", endpoint, why)


async def backoff(attempt: int, retry_after: str | None = None) -> None:
    """Exponential with full jitter, so many devices coming back online do not retry in step."""
    delay = random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt))
    if retry_after and retry_after.isdigit():
        delay = max(delay, min(float(retry_after), BACKOFF_MAX))
    await asyncio.sleep(delay)


class Transport:
    """The HTTP session to one peer at `base_url`. Use as `async with`; `requests` counts every
    request sent, retries included. `headers` go with every request."""

    def __init__(
        self,
        base_url: str,
        peer: Peer,
        timeout: aiohttp.ClientTimeout,
        ca_pem: bytes | None = None,
        tries: int = 1,
        retry_statuses: frozenset[int] = frozenset(),
        first_byte: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.endpoint = self.base_url.split("://", 1)[-1]
        self.peer = peer
        # Plain http keeps the default verification, for an https URL it may redirect to.
        self.tls: ssl.SSLContext | bool = True
        if self.base_url.startswith("https://"):
            try:
                self.tls = client_trust(ca_pem)
            except ValueError as err:
                raise PeerError(peer.untrusted, f"{peer.name}: {err}") from None
        self.timeout = timeout
        self.tries = tries
        self.retry_statuses = retry_statuses
        self.first_byte = first_byte
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None
        # The proxy for each scheme://host this transport talks to, looked up once.
        self._proxies: dict[tuple[str, str], Proxy] = {}
        self.requests = 0

    async def __aenter__(self) -> Transport:
        # HTTP(S)_PROXY / NO_PROXY are honoured through `_proxy` (sites often reach the cloud
        # through a proxy), not aiohttp's trust_env: that also looks for a .netrc in a worker
        # thread on every request, which doubled the client's CPU on a reconcile of many tags.
        self._session = aiohttp.ClientSession(timeout=self.timeout, headers=self._headers)
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

    def _proxy(self, url: str) -> Proxy:
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "")
        if key not in self._proxies:
            self._proxies[key] = environment_proxy(url)
        return self._proxies[key]

    def unreachable(
        self, err: BaseException | str, peer: Peer | None = None, first_byte: float | None = None
    ) -> Unreachable:
        """`err` (or a reason already in words) as the peer's Unreachable."""
        why = err if isinstance(err, str) else reason(err, self.timeout, first_byte)
        return cannot_reach(peer or self.peer, self.endpoint, why)

    async def send(
        self,
        method: str,
        url: str | URL,
        headers: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        params: Any = None,
        timeout: aiohttp.ClientTimeout | None = None,
        tries: int | None = None,
        peer: Peer | None = None,
    ) -> aiohttp.ClientResponse:
        """One request, retried as configured; the caller reads and releases the response.
        `body` makes the request body afresh for each attempt (a stream cannot be re-sent);
        `peer` words the errors of a request to another host (a token service)."""
        if self._session is None:
            raise RuntimeError("use the client as `async with`")
        tries = tries or self.tries
        proxy, proxy_auth = self._proxy(str(url))
        # A request with a body has its headers only once the body is sent: not bounded.
        first_byte = self.first_byte if body is None else None
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(first_byte):
                    response = await self._session.request(
                        method,
                        url,
                        headers=headers,
                        params=params,
                        data=body() if body else None,
                        ssl=self.tls,
                        proxy=proxy,
                        proxy_auth=proxy_auth,
                        timeout=timeout or self.timeout,
                    )
            except aiohttp.ClientConnectorCertificateError as err:
                raise untrusted(peer or self.peer, err.certificate_error) from None
            except aiohttp.ClientSSLError as err:
                raise untrusted(peer or self.peer, err) from None
            except (aiohttp.ClientConnectionError, TimeoutError) as err:
                attempt += 1
                if attempt >= tries:
                    raise self.unreachable(err, peer, first_byte) from None
                await backoff(attempt)
                continue
            except (aiohttp.ClientError, OSError) as err:
                raise self.unreachable(err, peer, first_byte) from None
            finally:
                self.requests += 1
            if response.status in self.retry_statuses:
                response.release()
                attempt += 1
                if attempt < tries:
                    await backoff(attempt, response.headers.get("Retry-After"))
                    continue
                raise self.unreachable(
                    f"answered {response.status} {attempt} times to {method} {url}", peer
                )
            return response

    async def fetch(
        self,
        method: str,
        url: str | URL,
        headers: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        params: Any = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> tuple[int, CIMultiDict[str], bytes]:
        """`send`, its answer read whole: status, headers and body (for small JSON answers)."""
        response = await self.send(method, url, headers, body, params, timeout)
        try:
            async with response:
                return response.status, response.headers.copy(), await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise self.unreachable(err) from None
