"""The gateway API, parent side (PROTOCOL.md §2-§3): what children call under `/gateway/v1/`.

A child authenticates with HTTP Basic, its sync token's name and password; the token's scope map
must hold the gateway actions for the registry named in the path (its own, or on an ancestor's
token, a descendant's); each handler declares the action it needs (`@gateway_access`). Answers
are JSON; refusals are `OCIError`s, which the middleware answers with the OCI error body.

On a root the answers come from its hierarchy. Every authenticated call is contact (PROTOCOL.md
§6): `activate` and `status` stamp the registry named in the path, `settings` touches it, and a
call an ancestor relays (its token, a descendant's name) also counts for the relaying registry,
which plainly reached the root. On a connected registry the same routes relay for its
descendants (`registry/relay.py`); on any other node they answer 404.

The change feed (`changes`, PROTOCOL.md §3) is this node's own: on a root for every registry of
its hierarchy, on a connected registry for its descendants, authorized by the relay and scoped
by the descendant's cached repositories. It is never relayed upward. What a child sees of it,
and how long rows stay, are control/feed.py's rules; the rows are storage/feed.py's.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from appliance import __version__
from appliance.auth.basic import basic_credentials
from appliance.auth.scopes import CONFIG_READ, CONFIG_WRITE, MESSAGE_READ, MESSAGE_WRITE
from appliance.control.feed import read_changes
from appliance.control.hierarchy import Hierarchy, settings_etag
from appliance.control.node import CLOUD, CONNECTED
from appliance.oci.errors import ErrorCode, OCIError
from appliance.registry.access import CREDENTIALS, basic_unauthorized
from appliance.registry.context import Handler, json_body, store_of
from appliance.registry.errors import hierarchy_refusals
from appliance.registry.relay import GATEWAY_REALM, Relay

HIERARCHY = web.AppKey("hierarchy", Hierarchy)
RELAY = web.AppKey("relay", Relay)
PREFIX = "/gateway/v1/registries/{name}"
# The change feed's long poll: the longest wait, and how often it looks.
MAX_WAIT = 30.0
POLL_EVERY = 0.5


def _relaying(request: web.Request) -> bool:
    return store_of(request).node.role == CONNECTED


def gateway_access(action: str) -> Callable[[Handler], Handler]:
    """Declare the gateway action (`config/read`, …) a handler needs on the path's registry:
    on a connected registry, as the relay checks it; elsewhere, the caller's sync token must
    hold it, and only a root answers (404 NAME_UNKNOWN on any other node)."""

    def mark(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            name = request.match_info["name"]
            if _relaying(request):
                await request.app[RELAY].authorize(request, name, action)
            else:
                await _authorize(request, name, action)
            return await handler(request)

        return checked

    return mark


async def _authorize(request: web.Request, name: str, action: str) -> None:
    """On a root: the caller's sync token may do `action` on `name`; the call is contact."""
    basic = basic_credentials(request.headers.get("Authorization", ""))
    if basic is None:
        raise basic_unauthorized(
            GATEWAY_REALM, "the gateway needs the sync token's Basic credentials"
        )
    credentials = request.app[CREDENTIALS]
    token = await credentials.authenticate(*basic)
    if token is None:
        raise basic_unauthorized(GATEWAY_REALM, "Incorrect Password")
    if action not in credentials.gateway_actions(token.name, name.lower()):
        raise OCIError(
            ErrorCode.DENIED,
            f"token {token.name!r} may not {action} for connected registry {name!r}",
        )
    if store_of(request).node.role != CLOUD:
        raise OCIError(ErrorCode.NAME_UNKNOWN, "this node is not a parent of connected registries")
    request.app[HIERARCHY].touch_relaying(token.name, name)


def _settings_response(request: web.Request, settings: dict[str, Any]) -> web.Response:
    etag = settings_etag(settings)
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return web.json_response(settings, headers={"ETag": etag})


@gateway_access(CONFIG_WRITE)
async def activate(request: web.Request) -> web.StreamResponse:
    if _relaying(request):
        return await request.app[RELAY].forward(request, "activate")
    name = request.match_info["name"]
    body = await json_body(request)
    instance = body.get("instanceId")
    if not isinstance(instance, str) or not 8 <= len(instance) <= 100:
        raise OCIError(ErrorCode.INVALID, "instanceId must be a string of 8-100 characters")
    hierarchy = request.app[HIERARCHY]
    with hierarchy_refusals():
        hierarchy.activate(
            name,
            instance,
            str(body.get("version", "")),
            str(body.get("loginServer", "")),
            str(body.get("hostname", "")),
        )
        return _settings_response(request, hierarchy.settings(name))


@gateway_access(CONFIG_WRITE)
async def deactivate(request: web.Request) -> web.StreamResponse:
    if _relaying(request):
        return await request.app[RELAY].forward(request, "deactivate")
    body = await json_body(request)
    instance = body.get("instanceId")
    with hierarchy_refusals():
        request.app[HIERARCHY].deactivate(
            request.match_info["name"], instance if isinstance(instance, str) else ""
        )
    return web.Response(status=204)


@gateway_access(CONFIG_READ)
async def settings(request: web.Request) -> web.StreamResponse:
    if _relaying(request):
        return await request.app[RELAY].forward(request, "settings")
    name = request.match_info["name"]
    hierarchy = request.app[HIERARCHY]
    with hierarchy_refusals():
        hierarchy.touch(name)
        return _settings_response(request, hierarchy.settings(name))


@gateway_access(MESSAGE_WRITE)
async def status(request: web.Request) -> web.StreamResponse:
    if _relaying(request):
        return await request.app[RELAY].forward(request, "status")
    body = await json_body(request)
    with hierarchy_refusals():
        request.app[HIERARCHY].report_status(request.match_info["name"], body)
    return web.Response(status=204)


def _query_number(request: web.Request, key: str, default: float) -> float | None:
    text = request.query.get(key)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 and value == value else None  # NaN is not a number here


def _feed_scope(request: web.Request) -> tuple[str, ...]:
    """The repositories of the path's registry, whose change feed the caller may read: from
    the hierarchy on a root (the call is contact), from the cached settings on a middle node."""
    name = request.match_info["name"]
    if _relaying(request):
        return request.app[RELAY].feed_scope(name)
    hierarchy = request.app[HIERARCHY]
    with hierarchy_refusals():
        hierarchy.touch(name)
        return hierarchy.get(name).repositories


@gateway_access(MESSAGE_READ)
async def changes(request: web.Request) -> web.StreamResponse:
    scope = _feed_scope(request)
    cursor = _query_number(request, "cursor", 0)
    wait = _query_number(request, "wait", 0)
    # float() also reads "inf" and "1e400", which int() cannot convert.
    if cursor is None or not math.isfinite(cursor) or cursor != int(cursor) or wait is None:
        raise OCIError(
            ErrorCode.UNSUPPORTED,
            "cursor must be a whole number and wait seconds >= 0",
            status=400,
        )
    feed = store_of(request).feed
    answer = read_changes(feed, scope, int(cursor))
    # Long poll: hold an empty answer until a row arrives or `wait` (at most MAX_WAIT) passes.
    # Rows are looked for every POLL_EVERY seconds; the loop is bounded by the deadline.
    deadline = time.monotonic() + min(wait, MAX_WAIT)
    while not answer["reset"] and not answer["changes"] and time.monotonic() < deadline:
        await asyncio.sleep(min(POLL_EVERY, max(0.0, deadline - time.monotonic())))
        answer = read_changes(feed, scope, int(answer["cursor"]))
    return web.json_response(answer)


async def version(request: web.Request) -> web.StreamResponse:
    """Unauthenticated: lets a device check it reached a gateway before it sends secrets."""
    return web.json_response({"gateway": "v1", "version": __version__})


async def ca_certificate(request: web.Request) -> web.StreamResponse:
    """Unauthenticated: this node's CA certificate (PEM), public data. A device whose connection
    string pins `ParentCertificateFingerprint` fetches it, checks the fingerprint and from then on
    verifies this node's chain against it."""
    try:
        pem = store_of(request).layout.tls_ca_cert.read_bytes()
    except FileNotFoundError:
        raise OCIError(
            ErrorCode.NAME_UNKNOWN, "this node has no CA certificate (tls generate makes one)"
        ) from None
    return web.Response(body=pem, content_type="application/x-pem-file")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/gateway/v1/", version)
    r.add_get("/gateway/v1/ca.crt", ca_certificate)
    r.add_post(f"{PREFIX}/activate", activate)
    r.add_post(f"{PREFIX}/deactivate", deactivate)
    r.add_get(f"{PREFIX}/settings", settings)
    r.add_put(f"{PREFIX}/status", status)
    r.add_get(f"{PREFIX}/changes", changes)
