"""GET/HEAD/PUT/DELETE /v2/<name>/manifests/<reference> (end-3, end-7, end-7b, end-9).

Manifests are served byte-exact with the media type they were pushed with. On a connected
registry, one that is missing here but in the sync scope is fetched from the parent in the same
request (sync/ondemand.py).
"""

from __future__ import annotations

from aiohttp import web

from appliance.auth.scopes import CONTENT_DELETE, CONTENT_READ, CONTENT_WRITE
from appliance.oci.digests import Digest
from appliance.oci.errors import ErrorCode, OCIError
from appliance.oci.manifests import MAX_MANIFEST_BYTES
from appliance.oci.names import parse_reference, validate_tag
from appliance.registry.context import ON_DEMAND, repository_of, requires, store_of
from appliance.storage.store import manifest_too_large


def _existing_reference(request: web.Request) -> str | Digest:
    """The reference of a manifest to read or delete: one that cannot name a manifest names
    none that exists, so it is 404 MANIFEST_UNKNOWN (as distribution answers), not 400."""
    text = request.match_info["reference"]
    try:
        return parse_reference(text)
    except OCIError:
        raise OCIError(
            ErrorCode.MANIFEST_UNKNOWN,
            detail={"name": repository_of(request), "reference": text[:300]},
        ) from None


@requires(CONTENT_READ)
async def get_manifest(request: web.Request) -> web.StreamResponse:
    repository = repository_of(request)
    reference = _existing_reference(request)
    manifest = store_of(request).manifest(repository, reference)
    if manifest is None:
        manifest = await request.app[ON_DEMAND].manifest(repository, reference)
    if manifest is None:
        raise OCIError(
            ErrorCode.MANIFEST_UNKNOWN,
            detail={"name": repository, "reference": str(reference)},
        )
    if request.method == "GET":
        store_of(request).pulls.note_manifest(repository, manifest.digest)
    return web.Response(
        body=manifest.content,
        headers={
            "Content-Type": manifest.media_type,
            "Docker-Content-Digest": manifest.digest,
            "ETag": f'"{manifest.digest}"',
        },
    )


async def _read_limited(request: web.Request) -> bytes:
    """The request body, refused with 413 as soon as it passes the manifest size limit."""
    if request.content_length is not None and request.content_length > MAX_MANIFEST_BYTES:
        raise manifest_too_large(request.content_length)
    body = bytearray()
    async for piece in request.content.iter_any():
        body += piece
        if len(body) > MAX_MANIFEST_BYTES:
            raise manifest_too_large(len(body))
    return bytes(body)


@requires(CONTENT_READ, CONTENT_WRITE)
async def put_manifest(request: web.Request) -> web.StreamResponse:
    repository = repository_of(request)
    reference = parse_reference(request.match_info["reference"])
    tags = [validate_tag(tag) for tag in request.query.getall("tag", [])]
    expected: Digest | None = None
    if isinstance(reference, Digest):
        expected = reference
    else:
        tags.insert(0, reference)
    body = await _read_limited(request)
    digest, parsed = store_of(request).put_manifest(
        repository,
        body,
        request.headers.get("Content-Type", ""),
        list(dict.fromkeys(tags)),
        expected,
    )
    response = web.Response(
        status=201,
        headers={
            "Location": f"/v2/{repository}/manifests/{digest}",
            "Docker-Content-Digest": str(digest),
        },
    )
    if parsed.subject is not None:
        response.headers["OCI-Subject"] = str(parsed.subject.digest)
    for tag in request.query.getall("tag", []):
        response.headers.add("OCI-Tag", tag)
    return response


@requires(CONTENT_DELETE)
async def delete_manifest(request: web.Request) -> web.StreamResponse:
    repository = repository_of(request)
    reference = _existing_reference(request)
    store = store_of(request)
    if isinstance(reference, Digest):
        store.delete_manifest(repository, reference)
    else:
        store.delete_tag(repository, reference)
    return web.Response(status=202)
