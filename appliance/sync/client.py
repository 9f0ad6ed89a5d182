"""The one OCI distribution client every upstream is reached with: our own parent (its sync
token) and plain registries (CNCF distribution, Harbor, cloud registries).

What a caller may rely on:
- Authentication (registry_auth.py): anonymous, then whatever the registry's
  `WWW-Authenticate` asks for — Basic with the configured credentials, or Docker's Bearer flow
  (token from the realm, with Basic credentials when there are some, cached per scope). Once a
  Bearer realm is known, tokens for new scopes are fetched before the request, so each
  repository costs no extra 401 round trip.
- Transport (transport.py): HTTPS verified against the given CA (PEM) or the system store;
  `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` honoured; connection errors, timeouts, 429 and 5xx
  retried with exponential backoff and jitter, a bounded number of times, then
  `UpstreamUnreachable`.
- Integrity: a manifest fetched by digest is checked against that digest, one fetched by tag
  against `Docker-Content-Digest` when the registry sends it. Blobs are streamed unverified: the
  store verifies them as they are written (`Store.finish_upload`), so nothing bad is stored.
- Resuming: a blob stream interrupted mid-body continues with `Range` from the bytes already
  yielded, and a caller holding bytes from an earlier run starts with `Range` too
  (`blob_chunks(start=…)`); an upstream that answers a `Range` with the whole blob raises
  `RangeIgnored`, so the caller restarts from zero.
- Bandwidth: with a `limiter` (bandwidth.py), every blob chunk downloaded or uploaded takes its
  bytes from it; share one limiter (`limiter_for(rate)`) between clients to share the limit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urljoin

import aiohttp

from appliance.bodies import body_pieces
from appliance.oci.digests import Digest
from appliance.oci.errors import OCIError
from appliance.oci.manifests import MANIFEST_TYPES
from appliance.sync.bandwidth import TokenBucket
from appliance.sync.registry_auth import RegistryAuth
from appliance.transport import (
    Peer,
    PeerError,
    Transport,
    Unreachable,
    backoff,
    first_error,
    json_answer,
)

CHUNK = 1024 * 1024
TRIES = 5
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# No total limit: a multi-GiB blob may take an hour on a slow link; a stalled one may not.
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=60)
ACCEPT_MANIFESTS = ", ".join(sorted(MANIFEST_TYPES))
UNTRUSTED_UPSTREAM = "UNTRUSTED_UPSTREAM"
UPSTREAM_UNREACHABLE = "UPSTREAM_UNREACHABLE"

# The sync layer's names for the transport's one error type: the upstream refused (its OCI
# error code and message) or answered nonsense; or no usable answer came after every retry.
RegistryError = PeerError
UpstreamUnreachable = Unreachable


class RangeIgnored(PeerError):
    """The upstream answered a `Range` request with the whole blob (200): the bytes the caller
    holds cannot be continued, only thrown away and fetched again from zero."""

    def __init__(self, message: str) -> None:
        super().__init__("RANGE_UNSUPPORTED", message)


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    body: bytes
    media_type: str
    digest: Digest


def next_link(header: str | None, base: str) -> str | None:
    """The absolute URL of a `Link: <…>; rel="next"` header, if any."""
    if not header:
        return None
    for part in header.split(","):
        url, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", "") or "rel=next" in params.replace(" ", ""):
            return urljoin(base, url.strip().strip("<>"))
    return None


class RegistryClient:
    """One upstream registry. Use as `async with`; `requests` counts every HTTP request sent.
    `limiter`, when given, paces every blob transfer (it may be shared with other clients).
    `first_byte`, when given, bounds in seconds how long a request without a body may wait for
    the response's headers, connecting included; the body is then bounded only by `timeout`'s
    `sock_read` between reads, so a slow but moving download is never cut by it."""

    def __init__(
        self,
        base_url: str,
        username: str | None = None,
        password: str | None = None,
        ca_pem: bytes | None = None,
        tries: int = TRIES,
        timeout: aiohttp.ClientTimeout = TIMEOUT,
        limiter: TokenBucket | None = None,
        first_byte: float | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.endpoint = self.base_url.split("://", 1)[-1]
        self._transport = Transport(
            self.base_url,
            upstream(self.endpoint),
            timeout,
            ca_pem,
            tries=tries,
            retry_statuses=RETRY_STATUSES,
            first_byte=first_byte,
        )
        self._auth = RegistryAuth(self._transport, username, password)
        self._limiter = limiter

    @property
    def requests(self) -> int:
        return self._transport.requests

    async def __aenter__(self) -> RegistryClient:
        await self._transport.__aenter__()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._transport.__aexit__(kind, error, traceback)

    # -- the API ---------------------------------------------------------------------------

    async def list_tags(self, name: str) -> list[str]:
        """Every tag of `name`, following `Link` pagination; [] if the repository is unknown."""
        tags: list[str] = []
        url: str | None = f"{self.base_url}/v2/{name}/tags/list?n=1000"
        seen: set[str] = set()
        while url is not None and url not in seen:
            seen.add(url)
            async with await self._send("GET", url, _pull(name)) as response:
                if response.status == 404:
                    return []
                if response.status != 200:
                    raise await _refusal(response, f"tags of {name}")
                page = await json_answer(response)
                tags += page.get("tags") or []
                url = next_link(response.headers.get("Link"), url)
        return tags

    async def catalog(self) -> list[str] | None:
        """Every repository the upstream lists to us, or None if it offers no `_catalog`."""
        names: list[str] = []
        url: str | None = f"{self.base_url}/v2/_catalog?n=1000"
        seen: set[str] = set()
        while url is not None and url not in seen:
            seen.add(url)
            try:
                response = await self._send("GET", url, "registry:catalog:*")
            except RegistryError as err:
                if err.status in (401, 403):
                    return None
                raise
            async with response:
                if response.status in (401, 403, 404, 405):
                    return None
                if response.status != 200:
                    raise await _refusal(response, "_catalog")
                names += (await json_answer(response)).get("repositories") or []
                url = next_link(response.headers.get("Link"), url)
        return names

    async def head_manifest(self, name: str, reference: str) -> Digest | None:
        """The digest `reference` points at, or None if there is no such manifest."""
        url = f"{self.base_url}/v2/{name}/manifests/{reference}"
        headers = {"Accept": ACCEPT_MANIFESTS}
        async with await self._send("HEAD", url, _pull(name), headers) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise await _refusal(response, f"manifest {name}:{reference}")
            header = response.headers.get("Docker-Content-Digest")
        if header:
            return _digest(header, self.endpoint)
        # A registry that does not say: the bytes do.
        fetched = await self.get_manifest(name, reference)
        return fetched.digest if fetched else None

    async def get_manifest(self, name: str, reference: str | Digest) -> FetchedManifest | None:
        """The manifest's exact bytes, media type and (verified) digest; None if unknown."""
        url = f"{self.base_url}/v2/{name}/manifests/{reference}"
        headers = {"Accept": ACCEPT_MANIFESTS}
        async with await self._send("GET", url, _pull(name), headers) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise await _refusal(response, f"manifest {name}:{reference}")
            body = await response.read()
            media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
            claimed = response.headers.get("Docker-Content-Digest")
        digest = Digest.of(body)
        expected = reference if isinstance(reference, Digest) else None
        if expected is None and claimed:
            expected = _digest(claimed, self.endpoint)
        if expected is not None and digest != expected:
            raise RegistryError(
                "DIGEST_INVALID",
                f"{self.endpoint} sent manifest {name}:{reference} with digest {digest}, "
                f"not {expected}",
            )
        return FetchedManifest(body, media_type, digest)

    async def blob_chunks(
        self, name: str, digest: Digest, start: int = 0
    ) -> AsyncGenerator[bytes, None]:
        """The blob's bytes from `start` on, in chunks as they arrive. A connection lost
        mid-body is picked up again with `Range` (bounded retries). `RangeIgnored` when the
        upstream sends the whole blob to a `Range` request: nothing of it has been yielded."""
        url = f"{self.base_url}/v2/{name}/blobs/{digest}"
        offset, failures = start, 0
        while True:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                async with await self._send("GET", url, _pull(name), headers) as response:
                    if response.status == 416 and offset:
                        return  # nothing after `offset`: the blob was complete
                    expected_status = 206 if offset else 200
                    if response.status != expected_status:
                        if offset and response.status == 200:
                            raise RangeIgnored(f"{self.endpoint} ignored Range for blob {digest}")
                        raise await _refusal(response, f"blob {name}@{digest}")
                    # A zero-byte blob's response has aiohttp's shared empty payload, which
                    # iter_chunks never finishes: body_pieces ends at EOF.
                    async for chunk in body_pieces(response.content):
                        if self._limiter is not None:
                            await self._limiter.take(len(chunk))
                        offset += len(chunk)
                        yield chunk
                    return
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as err:
                failures += 1
                if failures >= self._transport.tries:
                    raise self._transport.unreachable(err) from None
                await backoff(failures)

    async def referrers(self, name: str, subject: Digest) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose subject is `subject`. Registries without the
        referrers API are asked for the OCI fallback tag (`sha256-<hex>`); [] if neither."""
        url = f"{self.base_url}/v2/{name}/referrers/{subject}"
        headers = {"Accept": "application/vnd.oci.image.index.v1+json"}
        async with await self._send("GET", url, _pull(name), headers) as response:
            if response.status == 200:
                return _descriptors(await json_answer(response))
            if response.status not in (404, 405, 400):
                raise await _refusal(response, f"referrers of {name}@{subject}")
        fallback = await self.get_manifest(name, f"sha256-{subject.hex}")
        if fallback is None:
            return []
        try:
            return _descriptors(json.loads(fallback.body))
        except ValueError:
            return []

    # -- uploads (push sync to our parent) ------------------------------------------------

    async def has_blob(self, name: str, digest: Digest) -> bool:
        """HEAD on the blob: does `name` already hold it?"""
        url = f"{self.base_url}/v2/{name}/blobs/{digest}"
        async with await self._send("HEAD", url, _push(name)) as response:
            if response.status == 404:
                return False
            if response.status != 200:
                raise await _refusal(response, f"blob {name}@{digest}")
            return True

    async def mount_blob(
        self, name: str, digest: Digest, readable: tuple[str, ...] = ()
    ) -> str | None:
        """Automatic cross-repository mount (`?mount=` without `from`: the registry looks for the
        blob in any repository we may read). None when it was mounted (201), else the upload
        session's URL (202), which the caller uploads to. `readable` names repositories the
        token should let us read, so a Bearer token allows the mount from them."""
        url = f"{self.base_url}/v2/{name}/blobs/uploads/?{urlencode({'mount': str(digest)})}"
        scope = " ".join([_push(name), *(_pull(other) for other in readable if other != name)])
        async with await self._send("POST", url, scope) as response:
            if response.status == 201:
                return None
            if response.status != 202:
                raise await _refusal(response, f"mount of {digest} into {name}")
            return self._location(response)

    async def upload_blob(
        self, name: str, digest: Digest, path: Path, session: str | None = None
    ) -> int:
        """A monolithic upload of the file at `path` (streamed, never held in memory) into the
        session `session` (a URL from `mount_blob`) or a new one; its size."""
        if session is None:
            url = f"{self.base_url}/v2/{name}/blobs/uploads/"
            async with await self._send("POST", url, _push(name)) as response:
                if response.status != 202:
                    raise await _refusal(response, f"upload into {name}")
                session = self._location(response)
        separator = "&" if "?" in session else "?"
        target = f"{session}{separator}{urlencode({'digest': str(digest)})}"
        size = path.stat().st_size
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        async with await self._send(
            "PUT", target, _push(name), headers, body=lambda: _file_chunks(path, self._limiter)
        ) as response:
            if response.status != 201:
                raise await _refusal(response, f"upload of {name}@{digest}")
        return size

    async def put_manifest(
        self, name: str, reference: str | Digest, body: bytes, media_type: str
    ) -> Digest:
        """PUT the manifest's exact bytes with its media type; the digest the registry took."""
        url = f"{self.base_url}/v2/{name}/manifests/{reference}"
        headers = {"Content-Type": media_type}
        sent = await self._send("PUT", url, _push(name), headers, body=lambda: body)
        async with sent as response:
            if response.status not in (200, 201):
                raise await _refusal(response, f"manifest {name}:{reference}")
            claimed = response.headers.get("Docker-Content-Digest")
        digest = Digest.of(body)
        if claimed and _digest(claimed, self.endpoint) != digest:
            raise RegistryError(
                "DIGEST_INVALID", f"{self.endpoint} stored {name}:{reference} as {claimed}"
            )
        return digest

    async def delete_manifest(self, name: str, reference: str | Digest) -> bool:
        """DELETE a tag or a manifest; False when it was already gone (404)."""
        url = f"{self.base_url}/v2/{name}/manifests/{reference}"
        async with await self._send("DELETE", url, _delete(name)) as response:
            if response.status == 404:
                return False
            if response.status not in (200, 202, 204):
                raise await _refusal(response, f"delete of {name}:{reference}")
            return True

    def _location(self, response: aiohttp.ClientResponse) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(
                "UNEXPECTED_RESPONSE", f"{self.endpoint} opened an upload without a Location"
            )
        return urljoin(f"{self.base_url}/", location)

    # -- sending --------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        scope: str,
        headers: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
    ) -> aiohttp.ClientResponse:
        """One request with the credentials `scope` needs (registry_auth.py), sent by the
        transport (trust, proxy, retries); the caller reads and releases the response."""
        challenged = False
        while True:
            sent = dict(headers or {})
            authorization = await self._auth.authorization(scope)
            if authorization:
                sent["Authorization"] = authorization
            response = await self._transport.send(method, url, sent, body)
            if response.status == 401 and not challenged:
                challenged = True
                header = response.headers.get("WWW-Authenticate", "")
                response.release()
                if await self._auth.answer(header, scope):
                    continue
                raise RegistryError(
                    "UNAUTHORIZED",
                    f"{self.endpoint} refused our credentials for {scope or url}",
                    401,
                )
            return response

def _pull(name: str) -> str:
    return f"repository:{name}:pull"


def _push(name: str) -> str:
    return f"repository:{name}:pull,push"


def _delete(name: str) -> str:
    return f"repository:{name}:delete"


async def _file_chunks(
    path: Path, limiter: TokenBucket | None = None
) -> AsyncGenerator[bytes, None]:
    """The file's bytes in chunks, read off the event loop, each paced by `limiter`."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            if limiter is not None:
                await limiter.take(len(chunk))
            yield chunk
    finally:
        handle.close()


def upstream(endpoint: str) -> Peer:
    """An upstream registry, in the words of its errors."""
    return Peer(
        name=endpoint,
        unreachable=UPSTREAM_UNREACHABLE,
        untrusted=UNTRUSTED_UPSTREAM,
        trust_hint="give a CA file",
        plain_http_hint="write its url with http:// (a loopback registry), or serve it with TLS",
    )


def _digest(text: str, endpoint: str) -> Digest:
    try:
        return Digest.parse(text.strip())
    except OCIError:
        raise RegistryError(
            "UNEXPECTED_RESPONSE", f"{endpoint} sent digest {text[:100]!r}"
        ) from None


def _descriptors(document: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = document.get("manifests")
    if not isinstance(manifests, list):
        return []
    return [m for m in manifests if isinstance(m, dict) and isinstance(m.get("digest"), str)]


async def _refusal(response: aiohttp.ClientResponse, what: str) -> RegistryError:
    """The upstream's first OCI error, or its status when it sent none."""
    error = first_error(await response.read())
    if error is None:
        return RegistryError(
            "UNEXPECTED_RESPONSE", f"{what}: HTTP {response.status}", response.status
        )
    code, message = error
    return RegistryError(code, f"{what}: {message}", response.status)
