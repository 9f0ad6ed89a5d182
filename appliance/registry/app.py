"""The aiohttp application: routes, middleware, and the store's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from appliance.registry import blobs, listing, manifests, uploads
from appliance.registry.context import STORE
from appliance.registry.errors import oci_errors
from appliance.storage.store import Store
from appliance.storage.uploads import ABANDONED_AFTER

log = logging.getLogger(__name__)

PURGE_EVERY = 3600.0

# `<name>` may contain slashes, so it is matched greedily up to the resource keyword; the
# handlers validate it against the spec's grammar (NAME_INVALID) before any use.
NAME = "{name:.+}"


async def api_base(request: web.Request) -> web.StreamResponse:
    """end-1: the client's probe that this is a v2 registry (and, later, its auth check)."""
    return web.json_response({})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v2/", api_base)
    r.add_get("/v2/_catalog", listing.catalog)
    r.add_route("POST", f"/v2/{NAME}/blobs/uploads/", uploads.start_upload)
    r.add_route("POST", f"/v2/{NAME}/blobs/uploads", uploads.start_upload)
    session = f"/v2/{NAME}/blobs/uploads/{{session}}"
    r.add_route("PATCH", session, uploads.patch_upload)
    r.add_route("PUT", session, uploads.finish_upload)
    r.add_route("GET", session, uploads.upload_status)
    r.add_route("DELETE", session, uploads.cancel_upload)
    blob = f"/v2/{NAME}/blobs/{{digest}}"
    r.add_get(blob, blobs.get_blob)  # add_get also answers HEAD
    r.add_delete(blob, blobs.delete_blob)
    manifest = f"/v2/{NAME}/manifests/{{reference}}"
    r.add_get(manifest, manifests.get_manifest)
    r.add_put(manifest, manifests.put_manifest)
    r.add_delete(manifest, manifests.delete_manifest)
    r.add_get(f"/v2/{NAME}/tags/list", listing.list_tags)
    r.add_get(f"/v2/{NAME}/referrers/{{digest}}", listing.list_referrers)


async def _purge_abandoned_uploads(store: Store, max_age: float) -> None:
    while True:
        removed = store.uploads.purge_abandoned(max_age)
        if removed:
            log.info("removed %d abandoned upload(s)", removed)
        await asyncio.sleep(PURGE_EVERY)


def make_app(data_dir: Path, upload_max_age: float = ABANDONED_AFTER) -> web.Application:
    """The registry over the store in `data_dir`; the store is opened at startup."""
    app = web.Application(middlewares=[oci_errors], client_max_size=1024**2)

    async def store_context(app: web.Application) -> AsyncIterator[None]:
        store = Store(data_dir)
        app[STORE] = store
        purge = asyncio.create_task(_purge_abandoned_uploads(store, upload_max_age))
        yield
        purge.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purge
        store.close()

    app.cleanup_ctx.append(store_context)
    add_routes(app)
    return app
