"""The gateway API, parent side (PROTOCOL.md §2-§3): what children call under `/gateway/v1/`.

A child authenticates with HTTP Basic, its sync token's name and password; the token's scope map
must hold the gateway actions for the registry named in the path (its own, or on an ancestor's
token, a descendant's). Answers are JSON; refusals are OCI-style error bodies.

On a root the answers come from its hierarchy. Every authenticated call is contact (PROTOCOL.md
§6): `activate` and `status` stamp the registry named in the path, `settings` touches it, and a
call an ancestor relays (its token, a descendant's name) also counts for the relaying registry,
which plainly reached the root. On a connected registry the same routes relay for its
descendants (`relay.py`); on any other node they answer 404.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from appliance import __version__
from appliance.control.hierarchy import Hierarchy, HierarchyError, settings_etag
from appliance.control.node import CLOUD, CONNECTED
from appliance.control.relay import Relay
from appliance.registry.access import CREDENTIALS, basic_credentials
from appliance.registry.context import store_of

HIERARCHY = web.AppKey("hierarchy", Hierarchy)
RELAY = web.AppKey("relay", Relay)
PREFIX = "/gateway/v1/registries/{name}"
CONFIG_READ, CONFIG_WRITE = "config/read", "config/write"
MESSAGE_READ, MESSAGE_WRITE = "message/read", "message/write"


def _error(status: int, code: str, message: str, detail: Any = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    headers = (
        {"WWW-Authenticate": 'Basic realm="connected-registry gateway"'} if status == 401 else None
    )
    return web.json_response({"errors": [error]}, status=status, headers=headers)


def _refusal(err: HierarchyError) -> web.Response:
    detail = None
    if err.code == "ALREADY_ACTIVATED":
        detail = "Deactivate it first: connected-registry cloud deactivate NAME (on the root)."
    return _error(err.status, err.code, err.message, detail)


async def _authorize(request: web.Request, action: str) -> str | web.Response:
    """The registry name of the path if the caller's sync token may do `action` on it;
    otherwise the refusal to send."""
    name = request.match_info["name"]
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return _error(401, "UNAUTHORIZED", "the gateway needs the sync token's Basic credentials")
    user, password = basic_credentials(value)
    credentials = request.app[CREDENTIALS]
    token = await credentials.authenticate(user, password)
    if token is None:
        return _error(401, "UNAUTHORIZED", "Incorrect Password")
    if action not in credentials.gateway_actions(token.name, name.lower()):
        return _error(
            403, "DENIED", f"token {token.name!r} may not {action} for connected registry {name!r}"
        )
    if store_of(request).state("role") != CLOUD:
        return _error(404, "NAME_UNKNOWN", "this node is not a parent of connected registries")
    request.app[HIERARCHY].touch_relaying(token.name, name)
    return name


def _relaying(request: web.Request) -> bool:
    return store_of(request).state("role") == CONNECTED


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        return _error(400, "MANIFEST_INVALID", "the body must be a JSON object")
    if not isinstance(body, dict):
        return _error(400, "MANIFEST_INVALID", "the body must be a JSON object")
    return body


def _settings_response(request: web.Request, settings: dict[str, Any]) -> web.Response:
    etag = settings_etag(settings)
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return web.json_response(settings, headers={"ETag": etag})


async def activate(request: web.Request) -> web.StreamResponse:
    if _relaying(request):
        return await request.app[RELAY].handle(request, "activate")
    name = await _authorize(request, CONFIG_WRITE)
    if isinstance(name, web.Response):
        return name
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    instance = body.get("instanceId")
    if not isinstance(instance, str) or not 8 <= len(instance) <= 100:
        return _error(400, "MANIFEST_INVALID", "instanceId must be a string of 8-100 characters")
    hierarchy = request.app[HIERARCHY]
    try:
        hierarchy.activate(
            name,
            instance,
            str(body.get("version", "")),
            str(body.get("loginServer", "")),
            str(body.get("hostname", "")),
        )
    except HierarchyError as err:
        return _refusal(err)
    return _settings_response(request, hierarchy.settings(name))


async def deactivate(request: web.Request) -> web.StreamResponse:
    if _relaying(request):
        return await request.app[RELAY].handle(request, "deactivate")
    name = await _authorize(request, CONFIG_WRITE)
    if isinstance(name, web.Response):
        return name
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    instance = body.get("instanceId")
    try:
        request.app[HIERARCHY].deactivate(name, instance if isinstance(instance, str) else "")
    except HierarchyError as err:
        return _refusal(err)
    return web.Response(status=204)


async def settings(request: web.Request) -> web.StreamResponse:
    if _relaying(request):
        return await request.app[RELAY].handle(request, "settings")
    name = await _authorize(request, CONFIG_READ)
    if isinstance(name, web.Response):
        return name
    hierarchy = request.app[HIERARCHY]
    try:
        hierarchy.touch(name)
        return _settings_response(request, hierarchy.settings(name))
    except HierarchyError as err:
        return _refusal(err)


async def status(request: web.Request) -> web.StreamResponse:
    if _relaying(request):
        return await request.app[RELAY].handle(request, "status")
    name = await _authorize(request, MESSAGE_WRITE)
    if isinstance(name, web.Response):
        return name
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    try:
        request.app[HIERARCHY].report_status(name, body)
    except HierarchyError as err:
        return _refusal(err)
    return web.Response(status=204)


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
        return _error(
            404, "NAME_UNKNOWN", "this node has no CA certificate (tls generate makes one)"
        )
    return web.Response(body=pem, content_type="application/x-pem-file")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/gateway/v1/", version)
    r.add_get("/gateway/v1/ca.crt", ca_certificate)
    r.add_post(f"{PREFIX}/activate", activate)
    r.add_post(f"{PREFIX}/deactivate", deactivate)
    r.add_get(f"{PREFIX}/settings", settings)
    r.add_put(f"{PREFIX}/status", status)
