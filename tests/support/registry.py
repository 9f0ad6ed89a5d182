"""Assertions and small HTTP steps shared by the /v2 API tests.

Every refusal the registry sends must be an OCI error body, `{"errors":[{"code","message",
"detail"}]}`, with a code from the distribution spec; `assert_oci_error` checks that and the status
in one call, so each test says only which status and code the scenario calls for.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import aiohttp
from yarl import URL

from support.oci import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, Image, canonical, descriptor

SPEC_ERROR_CODES = frozenset({
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
})

EMPTY_CONFIG = b"{}"
MISSING_DIGEST = "sha256:" + "0" * 64
API_VERSION = "registry/2.0"


async def body_of(resp: aiohttp.ClientResponse) -> bytes:
    """The body, also after release: `push_manifest` and friends read it, then return `resp`,
    and aiohttp refuses a second `read()` once the connection is released."""
    if resp._body is not None:
        return resp._body
    return await resp.read()


async def assert_oci_error(
    resp: aiohttp.ClientResponse, status: int, code: str | None = None
) -> dict:
    """Assert the status and an OCI error body; return the first error.

    `code` is errors[0]'s code (any spec code when None). A HEAD response carries no body, so for
    HEAD only the status is checked.
    """
    body = await body_of(resp)
    assert resp.status == status, (
        f"{resp.method} {resp.url}: expected {status}, got {resp.status}: {body[:500]!r}"
    )
    if resp.method == "HEAD":
        return {}
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise AssertionError(f"{resp.status} body is not JSON: {body[:500]!r}") from exc
    assert isinstance(doc, dict), f"error body is not an object: {doc!r}"
    errors = doc.get("errors")
    assert isinstance(errors, list), f"error body has no errors list: {doc!r}"
    assert errors, f"errors list is empty: {doc!r}"
    for error in errors:
        assert isinstance(error, dict), f"error entry is not an object: {error!r}"
        assert error.get("code") in SPEC_ERROR_CODES, f"not a spec error code: {error!r}"
        assert isinstance(error.get("message"), str), f"error has no message: {error!r}"
    if code is not None:
        assert errors[0]["code"] == code, f"expected {code}, got {errors[0]!r}"
    return errors[0]


def absolute(base: str, location: str) -> str:
    """A Location header may be absolute or relative to the registry."""
    return str(URL(base).join(URL(location)))


def with_query(url: str, *params: tuple[str, str]) -> str:
    """`url` with more query parameters, keeping the ones it carries (upload state, say)."""
    parsed = URL(url)
    return str(parsed.with_query([*parsed.query.items(), *params]))


def raw_url(base: str, path: str) -> URL:
    """A URL sent exactly as written: no dot-segment removal, no re-encoding."""
    return URL(base + path, encoded=True)


async def start_upload(http: aiohttp.ClientSession, base: str, repo: str) -> str:
    """POST a new upload session; return its absolute Location."""
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        assert resp.status == 202, await resp.text()
        return absolute(base, resp.headers["Location"])


async def patch_chunk(
    http: aiohttp.ClientSession, location: str, chunk: bytes, start: int
) -> aiohttp.ClientResponse:
    """PATCH one chunk with `Content-Range: <start>-<end>` (inclusive); the body is read."""
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Range": f"{start}-{start + len(chunk) - 1}",
    }
    async with http.patch(location, data=chunk, headers=headers) as resp:
        await resp.read()
        return resp


async def stream(data: bytes, piece: int = 7000) -> AsyncIterator[bytes]:
    """A body aiohttp sends with `Transfer-Encoding: chunked`, as skopeo and docker do."""
    for offset in range(0, len(data), piece):
        yield data[offset : offset + piece]


async def get_blob(http: aiohttp.ClientSession, base: str, repo: str, digest: str) -> bytes | None:
    """The blob's bytes as `repo` serves them, or None on 404."""
    async with http.get(f"{base}/v2/{repo}/blobs/{digest}") as resp:
        if resp.status == 404:
            await assert_oci_error(resp, 404, "BLOB_UNKNOWN")
            return None
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def get_manifest(
    http: aiohttp.ClientSession, base: str, repo: str, reference: str
) -> tuple[int, bytes]:
    async with http.get(f"{base}/v2/{repo}/manifests/{reference}") as resp:
        return resp.status, await resp.read()


async def list_tags(http: aiohttp.ClientSession, base: str, repo: str) -> list[str]:
    async with http.get(f"{base}/v2/{repo}/tags/list") as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json(content_type=None))["tags"] or []


def next_link(resp: aiohttp.ClientResponse, base: str) -> str | None:
    """The absolute URL of `Link: <...>; rel="next"`, or None when there is no next page."""
    for value in resp.headers.getall("Link", []):
        match = re.search(r'<([^>]*)>\s*;\s*rel="next"', value)
        if match:
            return absolute(base, match.group(1))
    return None


def make_artifact(
    subject: dict | None,
    artifact_type: str | None = "application/vnd.example.sbom.v1",
    annotations: dict | None = None,
    config_media_type: str = OCI_EMPTY,
    payload: bytes = b"artifact payload",
) -> Image:
    """An artifact manifest (OCI 1.1 guidance): the 2-byte `{}` config, one payload layer."""
    config = EMPTY_CONFIG if config_media_type == OCI_EMPTY else canonical({"payload": "config"})
    doc: dict = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config_media_type, config),
        "layers": [descriptor("application/vnd.example.payload", payload)],
    }
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    if subject is not None:
        doc["subject"] = subject
    if annotations is not None:
        doc["annotations"] = annotations
    return Image(canonical(doc), OCI_MANIFEST, [config, payload])


def make_index(children: list[Image], media_type: str = OCI_INDEX, **extra: object) -> Image:
    """An index (or Docker manifest list) over `children`, each with a platform of its own."""
    doc: dict = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            descriptor(
                child.media_type,
                child.manifest,
                platform={"architecture": f"arch{i}", "os": "linux"},
            )
            for i, child in enumerate(children)
        ],
        **extra,
    }
    return Image(canonical(doc), media_type, [])


def subject_of(image: Image) -> dict:
    """The descriptor a referrer puts in its `subject` field."""
    return descriptor(image.media_type, image.manifest)

