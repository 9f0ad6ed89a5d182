"""Blob uploads: /v2/<name>/blobs/uploads/ (end-4a/4b/11, end-5, end-6, end-13, end-14).

Clients use three patterns and all must work: monolithic (POST, then PUT with the body, or one
POST with `?digest=`), streamed (skopeo: one PATCH with no Content-Range, then an empty PUT), and
chunked (docker, containerd: PATCHes with `Content-Range`, each starting where the last ended).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from aiohttp import web

from appliance.auth.scopes import CONTENT_READ, CONTENT_WRITE
from appliance.bodies import body_pieces
from appliance.oci.digests import Digest
from appliance.oci.errors import ErrorCode, OCIError
from appliance.oci.names import validate_name
from appliance.registry.access import IDENTITY, may_pull
from appliance.registry.context import repository_of, requires, store_of
from appliance.storage.uploads import UploadStatus

# Offsets are at most 19 digits (2**63); the bound also keeps int() within its 4300-digit limit.
_CONTENT_RANGE = re.compile(r"(?:bytes )?([0-9]{1,19})-([0-9]{1,19})(?:/(?:[0-9]+|\*))?")


def _location(status: UploadStatus) -> str:
    return f"/v2/{status.repository}/blobs/uploads/{status.session_id}"


def _range(size: int) -> str:
    return f"0-{max(size - 1, 0)}"


def _progress_headers(status: UploadStatus) -> dict[str, str]:
    return {
        "Location": _location(status),
        "Range": _range(status.size),
        "Docker-Upload-UUID": status.session_id,
    }


def _created(repository: str, digest: Digest) -> web.Response:
    return web.Response(
        status=201,
        headers={
            "Location": f"/v2/{repository}/blobs/{digest}",
            "Docker-Content-Digest": str(digest),
        },
    )


def _has_body(request: web.Request) -> bool:
    return (
        request.content_length not in (None, 0)
        or request.headers.get("Transfer-Encoding", "").lower() == "chunked"
    )


def _body(request: web.Request) -> AsyncIterator[bytes]:
    return body_pieces(request.content)


@requires(CONTENT_READ, CONTENT_WRITE)
async def start_upload(request: web.Request) -> web.StreamResponse:
    repository = repository_of(request)
    store = store_of(request)
    query = request.query
    if "mount" in query:
        digest = Digest.parse(query["mount"])
        if "from" in query:
            sources = [validate_name(query["from"])]
        else:
            # The spec's automatic mount: from any repository holding the blob.
            sources = store.repositories_with_blob(digest)
        identity = request.get(IDENTITY)
        for source in sources:
            if may_pull(identity, source) and store.mount_blob(repository, digest, source):
                return _created(repository, digest)
        # Nothing this caller may mount: an ordinary session, as the spec asks.
    session = store.uploads.create(repository)
    if "digest" in query and "mount" not in query:
        digest = Digest.parse(query["digest"])
        async with store.uploads.lock(session.session_id):
            await store.finish_upload(session, digest, _body(request))
        return _created(repository, digest)
    return web.Response(status=202, headers=_progress_headers(session))


async def _session(request: web.Request) -> UploadStatus:
    repository = repository_of(request)
    return store_of(request).uploads.status(repository, request.match_info["session"])


def _check_content_range(request: web.Request, status: UploadStatus) -> None:
    """A chunk must start exactly where the upload ends; otherwise 416 and where it ends."""
    header = request.headers.get("Content-Range")
    if header is None:
        return
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None:
        raise OCIError(
            ErrorCode.BLOB_UPLOAD_INVALID,
            "Content-Range must be <start>-<end>",
            status=416,
            headers=_progress_headers(status),
        )
    start, end = int(match.group(1)), int(match.group(2))
    length = request.content_length
    if start != status.size or end < start or (length is not None and end - start + 1 != length):
        raise OCIError(
            ErrorCode.BLOB_UPLOAD_INVALID,
            f"chunk {start}-{end} does not continue the upload, which has {status.size} bytes",
            status=416,
            headers=_progress_headers(status),
        )


@requires(CONTENT_READ, CONTENT_WRITE)
async def patch_upload(request: web.Request) -> web.StreamResponse:
    store = store_of(request)
    status = await _session(request)
    async with store.uploads.lock(status.session_id):
        status = store.uploads.status(status.repository, status.session_id)
        _check_content_range(request, status)
        size = await store.uploads.append(status, _body(request))
    status = UploadStatus(status.session_id, status.repository, size)
    return web.Response(status=202, headers=_progress_headers(status))


@requires(CONTENT_READ, CONTENT_WRITE)
async def finish_upload(request: web.Request) -> web.StreamResponse:
    store = store_of(request)
    status = await _session(request)
    if "digest" not in request.query:
        raise OCIError(ErrorCode.DIGEST_INVALID, "the closing PUT needs ?digest=sha256:<hex>")
    digest = Digest.parse(request.query["digest"])
    async with store.uploads.lock(status.session_id):
        status = store.uploads.status(status.repository, status.session_id)
        body = None
        if _has_body(request):
            _check_content_range(request, status)
            body = _body(request)
        await store.finish_upload(status, digest, body)
    return _created(status.repository, digest)


@requires(CONTENT_READ, CONTENT_WRITE)
async def upload_status(request: web.Request) -> web.StreamResponse:
    status = await _session(request)
    return web.Response(status=204, headers=_progress_headers(status))


@requires(CONTENT_READ, CONTENT_WRITE)
async def cancel_upload(request: web.Request) -> web.StreamResponse:
    store = store_of(request)
    status = await _session(request)
    async with store.uploads.lock(status.session_id):
        store.uploads.cancel(status)
    return web.Response(status=204)
