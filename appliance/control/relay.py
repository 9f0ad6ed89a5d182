"""Relaying the gateway API for descendants (PROTOCOL.md §5), on a connected registry.

A connected registry answers `/gateway/v1/registries/{name}/…` for every registry below it: the
`descendants` of the settings its parent last sent (kept in node state, recursively nested).

Authentication. The caller's Basic credentials are a descendant's sync token (a child's, or a
deeper descendant's relaying through it); they are checked against the password hashes in the
cached `descendants` settings (scrypt, on the `PasswordChecks` threads; a success is remembered for
`CREDENTIAL_CACHE_SECONDS` under an HMAC of the credentials, and only while that hash is still
sent), and the token's `scopeMap.gateways` must grant the action for `{name}`. When the check
fails (unknown registry or token, wrong password, missing permission) this node first refreshes
its own settings from its parent (GET settings for itself; stored like activation stores them,
client tokens included) and checks once more: a registry created on the root after this node
activated can activate through it at once, and a rotated password works at once. Refreshes
caused by failures are at most one per `REFRESH_MIN_INTERVAL` seconds, so wrong passwords cannot
turn into a stream of calls to the parent.

Forwarding. `activate`, `deactivate`, `status` and `settings` go upward with this node's own
sync credential, naming the descendant; the parent's answer (status, body, ETag) is returned as
it is. While the parent is unreachable:
  - `settings` is answered from the cache, with the ETag the root computes (`settings_etag`);
  - `status` is accepted (204) and queued: the latest report per descendant, in node state
    under `queued_status/<name>`; the queue is flushed after the next call the parent answers
    and by a background task every `FLUSH_EVERY` seconds while it is not empty. A queued report
    superseded by a newer one that went through is dropped; one the parent refuses (4xx) too;
  - `activate` and `deactivate` are refused with 503 `PARENT_UNREACHABLE`: only the root can
    guarantee a single active instance.
A parent that answers but cannot be trusted (certificate) is 502 with the client's error code.
A relayed `settings` answer that differs from what this node has cached for that descendant
(a new scope, a rotated password) makes this node refresh its own settings before answering,
so the descendant's next calls here (its change feed, its pulls) already see the new settings.

The change feed. `changes` is not relayed: a descendant pulls its content from this node, so
this node's own feed is the one it needs, online or not (gateway.py serves it). `feed_scope`
authorizes it like the calls above (`message/read`) and scopes it by the descendant's cached
`repositories`.

Content. A child pulls from and pushes to this node's `/v2/` with its sync token, so the tokens
this node checks there are its own client tokens plus its children's sync tokens
(`served_tokens`); a ReadWrite child's pushes land in this node's outbox like any local write,
and go upward at this node's next sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from appliance.auth.credential_checks import CREDENTIAL_CACHE_SECONDS
from appliance.auth.tokens import CredentialError, Credentials
from appliance.control.gateway_client import GatewayClient, GatewayError, ParentUnreachable
from appliance.control.hierarchy import settings_etag
from appliance.control.node import CONNECTED, NodeState
from appliance.registry.access import basic_credentials
from appliance.storage.schema import write_transaction
from appliance.storage.store import Store

log = logging.getLogger(__name__)

QUEUED_STATUS = "queued_status/"
REFRESH_MIN_INTERVAL = 2.0
FLUSH_EVERY = 30.0
CONFIG_READ, CONFIG_WRITE = "config/read", "config/write"
MESSAGE_READ, MESSAGE_WRITE = "message/read", "message/write"
# action of the path → (method, gateway permission it needs)
ACTIONS = {
    "activate": ("POST", CONFIG_WRITE),
    "deactivate": ("POST", CONFIG_WRITE),
    "settings": ("GET", CONFIG_READ),
    "status": ("PUT", MESSAGE_WRITE),
}


class Refusal(Exception):
    """A relayed call refused on this node: the OCI-style error to answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        headers = (
            {"WWW-Authenticate": 'Basic realm="connected-registry gateway"'}
            if self.status == 401
            else None
        )
        body = {"errors": [{"code": self.code, "message": self.message}]}
        return web.json_response(body, status=self.status, headers=headers)


def descendants(settings: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """Every descendant's settings in `settings` (this node's), depth first."""
    for child in (settings or {}).get("descendants") or []:
        if isinstance(child, dict):
            yield child
            yield from descendants(child)


def find_descendant(settings: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    for entry in descendants(settings):
        if str(entry.get("name", "")).lower() == name.lower():
            return entry
    return None


def served_tokens(settings: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The tokens this node's `/v2/` checks from its parent's settings: the client tokens, and
    each child's sync token (the child pulls, and a ReadWrite child pushes, with it here). Only
    children: a deeper descendant talks to its own parent."""
    tokens = list((settings or {}).get("clientTokens") or [])
    for child in (settings or {}).get("descendants") or []:
        if isinstance(child, dict) and isinstance(child.get("syncToken"), dict):
            tokens.append(child["syncToken"])
    return tokens


def find_sync_token(settings: dict[str, Any] | None, token: str) -> dict[str, Any] | None:
    for entry in descendants(settings):
        sync_token = entry.get("syncToken")
        if isinstance(sync_token, dict) and sync_token.get("name") == token:
            return sync_token
    return None


def granted(sync_token: dict[str, Any], registry: str) -> frozenset[str]:
    """The gateway actions the token's scope map grants on `registry`."""
    actions: set[str] = set()
    for gateway in (sync_token.get("scopeMap") or {}).get("gateways") or []:
        if isinstance(gateway, dict) and str(gateway.get("gateway", "")).lower() == registry:
            actions.update(a for a in gateway.get("actions") or [] if isinstance(a, str))
    return frozenset(actions)


def _unexpired_hashes(sync_token: dict[str, Any], now: datetime) -> list[str]:
    hashes = []
    for password in sync_token.get("passwordHashes") or []:
        if not isinstance(password, dict) or not isinstance(password.get("hash"), str):
            continue
        expiry = password.get("expiry")
        if expiry is not None:
            try:
                moment = datetime.fromisoformat(str(expiry).replace("Z", "+00:00"))
            except ValueError:
                continue
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            if moment <= now:
                continue
        hashes.append(password["hash"])
    return hashes


class Relay:
    """The relaying gateway of one connected registry (one per running service)."""

    def __init__(self, store: Store, credentials: Credentials) -> None:
        self.store = store
        self.node = NodeState(store)
        self.credentials = credentials
        self._key = secrets.token_bytes(32)
        self._verified: dict[bytes, tuple[str, float]] = {}
        self._refresh_lock = asyncio.Lock()
        self._last_refresh = float("-inf")
        self._flush_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- the endpoints ---------------------------------------------------------------------

    async def handle(self, request: web.Request, action: str) -> web.StreamResponse:
        name = request.match_info["name"]
        method, permission = ACTIONS[action]
        try:
            await self._authorize(request, name, permission)
            body = await request.read() if method in ("POST", "PUT") else None
            if action == "status":
                body = _json_object(body)
            headers = {}
            if action == "settings" and "If-None-Match" in request.headers:
                headers["If-None-Match"] = request.headers["If-None-Match"]
            try:
                answer = await self._forward(method, name, action, body, headers)
            except ParentUnreachable as err:
                return self._offline(request, name, action, body, err)
        except Refusal as refusal:
            return refusal.response()
        status, answer_headers, data = answer
        if action == "status" and status < 300:
            self._drop_queued(name)
        self._reached_parent()
        if action == "settings" and status == 200:
            await self._follow(name, answer_headers.get("ETag"))
        headers = {
            key: answer_headers[key] for key in ("ETag", "Content-Type") if key in answer_headers
        }
        return web.Response(status=status, body=data or None, headers=headers)

    async def feed_scope(self, request: web.Request, name: str) -> tuple[str, ...]:
        """The repositories (names or patterns) of descendant `name`, once the caller's sync
        token proved it may read that registry's change feed; Refusal otherwise."""
        await self._authorize(request, name, MESSAGE_READ)
        cached = find_descendant(self.node.settings(), name)
        if cached is None:
            raise Refusal(404, "NAME_UNKNOWN", f"connected registry {name!r} not found")
        return tuple(r for r in cached.get("repositories") or [] if isinstance(r, str))

    async def _follow(self, name: str, etag: str | None) -> None:
        """The parent sent `name` settings that differ from this node's cache (a new scope, a
        rotated password): refresh the cache now, so the descendant's next call here (its feed,
        its pulls with its sync token) already sees them. Rate-limited like any refresh."""
        cached = find_descendant(self.node.settings(), name)
        if cached is not None and etag is not None and settings_etag(cached) == etag:
            return
        await self._refresh(time.monotonic())

    def _offline(
        self,
        request: web.Request,
        name: str,
        action: str,
        body: bytes | None,
        err: ParentUnreachable,
    ) -> web.Response:
        if action == "settings":
            cached = find_descendant(self.node.settings(), name)
            if cached is None:
                raise Refusal(404, "NAME_UNKNOWN", f"connected registry {name!r} not found")
            etag = settings_etag(cached)
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers={"ETag": etag})
            return web.json_response(cached, headers={"ETag": etag})
        if action == "status":
            self.node.set(self._queue_key(name), (body or b"{}").decode())
            return web.Response(status=204)
        raise Refusal(
            503,
            err.code,
            f"{err.message}; only the root can guarantee a single active instance, so {action} "
            "waits until it is reachable",
        )

    # -- who may call ------------------------------------------------------------------------

    async def _authorize(self, request: web.Request, name: str, permission: str) -> None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            message = "the gateway needs the sync token's Basic credentials"
            raise Refusal(401, "UNAUTHORIZED", message)
        user, password = basic_credentials(value)
        started = time.monotonic()
        try:
            await self._check(name, user, password, permission)
        except Refusal:
            if not await self._refresh(started):
                raise
            await self._check(name, user, password, permission)

    async def _check(self, name: str, user: str, password: str, permission: str) -> None:
        settings = self.node.settings()
        sync_token = find_sync_token(settings, user) if user else None
        if sync_token is None or not await self._verify(sync_token, user, password):
            raise Refusal(401, "UNAUTHORIZED", "Incorrect Password")
        if permission not in granted(sync_token, name.lower()):
            message = f"token {user!r} may not {permission} for connected registry {name!r}"
            raise Refusal(403, "DENIED", message)
        if find_descendant(settings, name) is None:
            raise Refusal(404, "NAME_UNKNOWN", f"connected registry {name!r} not found")

    async def _verify(self, sync_token: dict[str, Any], user: str, password: str) -> bool:
        if sync_token.get("status", "enabled") != "enabled":
            return False
        hashes = _unexpired_hashes(sync_token, datetime.now(UTC))
        key = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        cached = self._verified.get(key)
        if (
            cached is not None
            and time.monotonic() - cached[1] < CREDENTIAL_CACHE_SECONDS
            and cached[0] in hashes
        ):
            return True
        for stored in hashes:
            if await self.credentials.password_checks.verify(password, stored):
                if len(self._verified) >= 10000:
                    self._verified.clear()
                self._verified[key] = (stored, time.monotonic())
                return True
        return False

    # -- talking to the parent -------------------------------------------------------------------

    async def _forward(
        self,
        method: str,
        name: str,
        action: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> tuple[int, Any, bytes]:
        try:
            async with GatewayClient.for_node(self.store) as client:
                return await client.forward(method, name, action, body, headers)
        except ParentUnreachable:
            raise
        except GatewayError as err:
            raise Refusal(502, err.code, err.message) from None

    async def refresh(self) -> bool:
        """Fetch this node's own settings from its parent and store them; False when the
        parent could not be asked or refused."""
        try:
            async with GatewayClient.for_node(self.store) as client:
                fresh = await client.settings(self.node.get("settings_etag"))
        except GatewayError as err:
            log.warning("cannot refresh the settings from the parent: %s", err)
            return False
        self._reached_parent()
        if fresh is None:
            return True
        try:
            with write_transaction(self.store.db):
                self.credentials.replace_from_parent(served_tokens(fresh.body))
                self.node.set("settings", json.dumps(fresh.body, sort_keys=True))
                if fresh.etag:
                    self.node.set("settings_etag", fresh.etag)
                else:
                    self.store.delete_state("settings_etag")
        except CredentialError as err:
            log.warning("the parent's settings were not applied: %s", err)
            return False
        return True

    async def _refresh(self, started: float) -> bool:
        """Refresh after a failed check, unless one finished since `started` (then the check
        can simply run again) or one ran less than REFRESH_MIN_INTERVAL ago."""
        async with self._refresh_lock:
            if self._last_refresh >= started:
                return True
            if time.monotonic() - self._last_refresh < REFRESH_MIN_INTERVAL:
                return False
            self._last_refresh = time.monotonic()
            refreshed = await self.refresh()
            self._last_refresh = time.monotonic()
            return refreshed

    def _reached_parent(self) -> None:
        self.node.set("last_contact", datetime.now(UTC).isoformat(timespec="seconds"))
        if self.queued():
            task = asyncio.get_running_loop().create_task(self.flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- the status queue ------------------------------------------------------------------------

    def queued(self) -> dict[str, str]:
        """Queued status reports: descendant name → report (JSON text)."""
        rows = self.store.conn.execute(
            "SELECT key, value FROM node_state WHERE key LIKE ?", (QUEUED_STATUS + "%",)
        )
        return {key.removeprefix(QUEUED_STATUS): value for key, value in rows}

    def _queue_key(self, name: str) -> str:
        """Keyed by the name as the root spells it (the path's may differ in case)."""
        cached = find_descendant(self.node.settings(), name)
        return QUEUED_STATUS + (str(cached["name"]) if cached is not None else name)

    def _drop_queued(self, name: str) -> None:
        key = self._queue_key(name)
        if self.store.state(key) is not None:
            self.store.delete_state(key)

    async def flush(self) -> int:
        """Send the queued reports upward; how many left the queue."""
        sent = 0
        async with self._flush_lock:
            queue = self.queued()
            if not queue:
                return 0
            try:
                async with GatewayClient.for_node(self.store) as client:
                    for name, report in queue.items():
                        status, _, data = await client.forward(
                            "PUT", name, "status", report.encode()
                        )
                        if status >= 500:
                            log.warning("the parent answered %d to a queued status", status)
                            break
                        if status >= 400:
                            reason = data[:200].decode(errors="replace")
                            log.warning("the parent refused the status of %s: %s", name, reason)
                        key = QUEUED_STATUS + name
                        # Only if no newer report was queued while this one travelled.
                        if self.store.state(key) == report:
                            self.store.delete_state(key)
                        sent += 1
            except GatewayError as err:
                log.info("queued status reports wait for the parent: %s", err)
        return sent

    async def run(self) -> None:
        """Flush the queue every FLUSH_EVERY seconds while it is not empty (service lifetime)."""
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            try:
                if self.node.role == CONNECTED and self.queued():
                    await self.flush()
            except Exception:  # the loop must outlive one bad round; the log says why
                log.exception("flushing the queued status reports failed")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _json_object(body: bytes | None) -> bytes:
    try:
        value = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        value = None
    if not isinstance(value, dict):
        raise Refusal(400, "MANIFEST_INVALID", "the body must be a JSON object")
    return json.dumps(value).encode()
