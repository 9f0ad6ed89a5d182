"""GET/HEAD/DELETE /v2/<name>/blobs/<digest> (end-2, end-10).

Blob bodies are files served with sendfile by `web.FileResponse`, which also answers `Range`
requests (206, or 416 when unsatisfiable), so a pull interrupted half-way resumes. On a
connected registry, a blob that is missing here but in the sync scope is downloaded from the
parent into the store first, in the same request (sync/ondemand.py; not for a HEAD on a
ReadWrite node, which is a pushing client's check).
"""

from __future__ import annotations

from aiohttp import web

from appliance.auth.scopes import CONTENT_DELETE, CONTENT_READ
from appliance.oci.errors import ErrorCode, OCIError
from appliance.registry.context import ON_DEMAND, digest_of, repository_of, requires, store_of


@requires(CONTENT_READ)
async def get_blob(request: web.Request) -> web.StreamResponse:
    repository = repository_of(request)
    digest = digest_of(request)
    store = store_of(request)
    size = store.blob_size(repository, digest)
    if size is None and await request.app[ON_DEMAND].blob(
        repository, digest, head=request.method == "HEAD"
    ):
        size = store.blob_size(repository, digest)
    if size is None:
        raise OCIError(ErrorCode.BLOB_UNKNOWN, detail={"digest": str(digest)})
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": "application/octet-stream",
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
    }
    path = store.blob_path(digest)
    if not path.is_file():
        # Linked but missing on disk: the store was damaged outside our control.
        raise OCIError(ErrorCode.BLOB_UNKNOWN, "blob content is missing from storage")
    if request.method == "GET":
        store.pulls.note_blob(str(digest))
    return web.FileResponse(path, headers=headers)


@requires(CONTENT_DELETE)
async def delete_blob(request: web.Request) -> web.StreamResponse:
    repository = repository_of(request)
    digest = digest_of(request)
    store_of(request).delete_blob(repository, digest)
    return web.Response(status=202)
