"""The gateway API, parent side (PROTOCOL.md §2-§3): what children call under `/gateway/v1/`.

A child authenticates with HTTP Basic, its sync token's name and password; the token's scope map
must hold the gateway actions for the registry named in the path (its own, or on an ancestor's
token, a descendant's). Answers are JSON; refusals are OCI-style error bodies.

On a root the answers come from its hierarchy. Every authenticated call is contact (PROTOCOL.md
§6): `activate` and `status` stamp the registry named in the path, `settings` touches it, and a
call an ancestor relays (its token, a descendant's name) also counts for the relaying registry,
which plainly reached the root. On a connected registry the same routes relay for its
descendants (`relay.py`); on any other node they answer 404.

The change feed (`changes`, PROTOCOL.md §3) is the `changes` table, which the store writes for
every content change on every node. A root answers it for every registry of its hierarchy; a
connected registry answers it for its descendants from its own table (a child pulls its content
from this node, so this node's feed is the one it needs, whether the parent is reachable or not),
authorized by the relay (`Relay.feed_scope`: the descendant's sync token from the cached
settings, `message/read`, scoped by its cached repositories). It is never relayed upward.
Rows older than the longest `messageTtl` that matters are pruned at startup and hourly: on a
root, that of the hierarchy (`prune_changes`); on a connected registry, that of its cached
descendants (`prune_changes_for_descendants`). The newest row always stays, so that sequence
numbers never restart (they are SQLite rowids).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from appliance import __version__
from appliance.auth.scopes import matches
from appliance.control.hierarchy import Hierarchy, HierarchyError, settings_etag
from appliance.control.node import CLOUD, CONNECTED, NodeState
from appliance.control.relay import Refusal, Relay, descendants
from appliance.control.schedule import DEFAULT_TTL, ScheduleError, parse_duration
from appliance.registry.access import CREDENTIALS, basic_credentials
from appliance.registry.context import store_of
from appliance.storage.store import Store

log = logging.getLogger(__name__)

HIERARCHY = web.AppKey("hierarchy", Hierarchy)
RELAY = web.AppKey("relay", Relay)
PREFIX = "/gateway/v1/registries/{name}"
CONFIG_READ, CONFIG_WRITE = "config/read", "config/write"
MESSAGE_READ, MESSAGE_WRITE = "message/read", "message/write"
# The change feed: changes per answer, the longest long poll, how often it looks, and how many
# rows one answer scans at most (out-of-scope rows are skipped, not returned).
CHANGES_PAGE = 1000
MAX_WAIT = 30.0
POLL_EVERY = 0.5
MAX_SCANNED = 20 * CHANGES_PAGE
PRUNE_EVERY = 3600.0


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


def read_changes(conn: sqlite3.Connection, scope: tuple[str, ...], cursor: int) -> dict[str, Any]:
    """The feed after `cursor` for a child whose repositories are `scope` (names or patterns).

    `reset` when the child must reconcile fully: a first call (cursor 0), a cursor older than
    the oldest row kept, or one ahead of the newest (this root's database was replaced). The
    answer's cursor is the last row looked at, so rows outside the scope are not looked at
    again; `more` says the child should ask again at once."""
    oldest, newest = conn.execute("SELECT min(seq), max(seq) FROM changes").fetchone()
    current = newest or 0
    if cursor <= 0 or cursor > current or (oldest is not None and oldest > cursor + 1):
        return {"cursor": current, "reset": True, "changes": [], "more": False}
    found: list[dict[str, Any]] = []
    position = cursor
    rows = conn.execute(
        "SELECT seq, repository, op, tag, digest, time FROM changes WHERE seq > ? AND seq <= ? "
        "ORDER BY seq LIMIT ?",
        (cursor, current, MAX_SCANNED),
    )
    for seq, repository, op, tag, digest, moment in rows:
        position = seq
        if any(matches(entry, repository) for entry in scope):
            found.append(
                {
                    "seq": seq,
                    "repository": repository,
                    "op": op,
                    "tag": tag,
                    "digest": digest,
                    "time": moment,
                }
            )
            if len(found) >= CHANGES_PAGE:
                break
    return {"cursor": position, "reset": False, "changes": found, "more": position < current}


def _query_number(request: web.Request, key: str, default: float) -> float | None:
    text = request.query.get(key)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 and value == value else None  # NaN is not a number here


async def _feed_scope(request: web.Request) -> tuple[str, ...] | web.Response:
    """The repositories of the path's registry if the caller may read its change feed: from
    the hierarchy on a root (the call is contact), from the cached settings on a middle node."""
    if _relaying(request):
        try:
            return await request.app[RELAY].feed_scope(request, request.match_info["name"])
        except Refusal as refusal:
            return refusal.response()
    name = await _authorize(request, MESSAGE_READ)
    if isinstance(name, web.Response):
        return name
    hierarchy = request.app[HIERARCHY]
    try:
        hierarchy.touch(name)
        return hierarchy.get(name).repositories
    except HierarchyError as err:
        return _refusal(err)


async def changes(request: web.Request) -> web.StreamResponse:
    scope = await _feed_scope(request)
    if isinstance(scope, web.Response):
        return scope
    cursor = _query_number(request, "cursor", 0)
    wait = _query_number(request, "wait", 0)
    # float() also reads "inf" and "1e400", which int() cannot convert.
    if cursor is None or not math.isfinite(cursor) or cursor != int(cursor) or wait is None:
        return _error(400, "UNSUPPORTED", "cursor must be a whole number and wait seconds >= 0")
    conn = store_of(request).conn
    answer = read_changes(conn, scope, int(cursor))
    # Long poll: hold an empty answer until a row arrives or `wait` (at most MAX_WAIT) passes.
    # Rows are looked for every POLL_EVERY seconds; the loop is bounded by the deadline.
    deadline = time.monotonic() + min(wait, MAX_WAIT)
    while not answer["reset"] and not answer["changes"] and time.monotonic() < deadline:
        await asyncio.sleep(min(POLL_EVERY, max(0.0, deadline - time.monotonic())))
        answer = read_changes(conn, scope, int(answer["cursor"]))
    return web.json_response(answer)


def prune_changes(hierarchy: Hierarchy, now: datetime | None = None) -> int:
    """On a root: drop feed rows older than the longest messageTtl of the connected registries
    (the default TTL when there are none); the newest row always stays. How many went."""
    return _prune(hierarchy.store.conn, [cr.message_ttl for cr in hierarchy.all()], now)


def prune_changes_for_descendants(store: Store, now: datetime | None = None) -> int:
    """On a connected registry: the same, by the longest messageTtl of its descendants in the
    cached settings (the feed is served to them alone; the default TTL when there are none)."""
    ttls = [str(entry.get("messageTtl")) for entry in descendants(NodeState(store).settings())]
    return _prune(store.conn, ttls, now)


def _prune(conn: sqlite3.Connection, ttls: list[str], now: datetime | None) -> int:
    durations = [d for d in (_duration(ttl) for ttl in ttls) if d]
    longest = max(durations) if durations else parse_duration(DEFAULT_TTL, "message TTL")
    cutoff = ((now or datetime.now(UTC)) - longest).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    deleted = conn.execute(
        "DELETE FROM changes WHERE time < ? AND seq < (SELECT max(seq) FROM changes)", (cutoff,)
    )
    return deleted.rowcount


def _duration(text: str) -> timedelta | None:
    try:
        return parse_duration(text, "message TTL")
    except ScheduleError:
        return None


async def prune_periodically(store: Store, hierarchy: Hierarchy) -> None:
    """At startup and every PRUNE_EVERY seconds, on a root or a connected registry (a service
    lifetime task)."""
    while True:
        try:
            role = store.state("role")
            removed = 0
            if role == CLOUD:
                removed = prune_changes(hierarchy)
            elif role == CONNECTED:
                removed = prune_changes_for_descendants(store)
            if removed:
                log.info("pruned %d change feed row(s) past the message TTL", removed)
        except Exception:  # the loop must outlive one bad round (a locked database); log why
            log.exception("pruning the change feed failed")
        await asyncio.sleep(PRUNE_EVERY)


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
    r.add_get(f"{PREFIX}/changes", changes)
