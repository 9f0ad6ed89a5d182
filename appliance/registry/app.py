"""The aiohttp application: routes, middleware, and the store's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from aiohttp import web

from appliance.auth.access import AnonymousPull
from appliance.auth.bearer import TokenAuthority, load_or_create_key
from appliance.auth.tokens import Credentials
from appliance.config import Config
from appliance.control.feed import prune_periodically
from appliance.control.hierarchy import Hierarchy, offline_after_from
from appliance.registry import blobs, gateway, listing, management, manifests, token, uploads
from appliance.registry.access import AUTH, AUTHORITY, CREDENTIALS, AuthSettings, access_control
from appliance.registry.context import LOGIN, ON_DEMAND, STORE, requires
from appliance.registry.errors import UPLOAD_CHUNK_ROUTE, durable_writes, oci_errors
from appliance.registry.gateway import HIERARCHY, RELAY
from appliance.registry.relay import Relay
from appliance.storage.pulls import FLUSH_EVERY
from appliance.storage.space import DiskFull
from appliance.storage.store import Store
from appliance.storage.timestamps import utc_now
from appliance.storage.uploads import ABANDONED_AFTER
from appliance.sync.bandwidth import limiter_for
from appliance.sync.ondemand import OnDemand

log = logging.getLogger(__name__)

PURGE_EVERY = 3600.0

# `<name>` may contain slashes, so it is matched greedily up to the resource keyword; the
# handlers validate it against the spec's grammar (NAME_INVALID) before any use.
NAME = "{name:.+}"


@requires(LOGIN)
async def api_base(request: web.Request) -> web.StreamResponse:
    """end-1: the client's probe that this is a v2 registry (and, later, its auth check)."""
    return web.json_response({})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v2/", api_base)
    r.add_get("/oauth2/token", token.get_token)
    r.add_post("/oauth2/token", token.post_token)
    r.add_get("/v2/_catalog", listing.catalog)
    r.add_route("POST", f"/v2/{NAME}/blobs/uploads/", uploads.start_upload)
    r.add_route("POST", f"/v2/{NAME}/blobs/uploads", uploads.start_upload)
    session = f"/v2/{NAME}/blobs/uploads/{{session}}"
    r.add_route("PATCH", session, uploads.patch_upload, name=UPLOAD_CHUNK_ROUTE)
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


async def _flush_pulls(store: Store) -> None:
    """Write the last-pulled notes every few seconds (storage/pulls.py), never on a GET."""
    while True:
        await asyncio.sleep(FLUSH_EVERY)
        try:
            store.pulls.flush()
        except DiskFull:
            log.warning("disk full: last-pulled times not recorded this time")


def make_app(
    config: Config,
    upload_max_age: float = ABANDONED_AFTER,
    clock: Callable[[], datetime] = utc_now,
) -> web.Application:
    """The registry over the store in `config.data_dir`, opened at startup; `clock` is what
    password expiry and connection states are judged by (a test's, to move time)."""
    app = web.Application(
        middlewares=[oci_errors, durable_writes, access_control], client_max_size=1024**2
    )
    app[AUTH] = AuthSettings(config.auth_enabled, AnonymousPull(config.anonymous_pull))

    async def store_context(app: web.Application) -> AsyncIterator[None]:
        store = Store(config.data_dir, group_commit=True)
        app[STORE] = store
        app[CREDENTIALS] = Credentials(
            store.db,
            max_tokens=config.limits.tokens,
            max_scope_maps=config.limits.scope_maps,
            max_permissions=config.limits.repository_permissions,
            clock=clock,
        )
        app[AUTHORITY] = TokenAuthority(load_or_create_key(store.layout.token_signing_key))
        app[HIERARCHY] = Hierarchy(
            store,
            app[CREDENTIALS],
            max_client_tokens=config.limits.client_tokens,
            offline_after=offline_after_from(config.offline_after),
            clock=clock,
        )
        app[RELAY] = Relay(store, app[CREDENTIALS])
        app[ON_DEMAND] = OnDemand(store, limiter_for(config.bandwidth_limit))
        purge = asyncio.create_task(_purge_abandoned_uploads(store, upload_max_age))
        flush = asyncio.create_task(app[RELAY].run())
        prune = asyncio.create_task(prune_periodically(store, app[HIERARCHY]))
        pulls = asyncio.create_task(_flush_pulls(store))
        yield
        for task in (purge, flush, prune, pulls):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(DiskFull):
            store.pulls.flush()
        await app[RELAY].close()
        await app[ON_DEMAND].close()
        await app[CREDENTIALS].close()
        store.close()

    app.cleanup_ctx.append(store_context)
    add_routes(app)
    gateway.add_routes(app)
    management.add_routes(app)
    return app
