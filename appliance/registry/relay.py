"""Relaying the gateway API for descendants (PROTOCOL.md §5), on a connected registry.

A connected registry answers `/gateway/v1/registries/{name}/…` for every registry below it: the
`descendants` of the settings its parent last sent (kept in node state, recursively nested).

Authentication. The caller's Basic credentials are a descendant's sync token (a child's, or a
deeper descendant's relaying through it); they are checked against the password hashes in the
cached `descendants` settings (scrypt on the `PasswordChecks` threads, or inline for the fast
hash of a generated password: auth/passwords.py; a success is remembered for
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
this node's own feed is the one it needs, online or not (registry/gateway.py serves it), to a
caller `authorize`d like the calls above (`message/read`), scoped by the descendant's cached
`repositories` (`feed_scope`).

Content. A child pulls from and pushes to this node's `/v2/` with its sync token, so the tokens
this node checks there are its own client tokens plus its children's sync tokens
(`served_tokens`, control/descendants.py); a ReadWrite child's pushes land in this node's outbox
like any local write, and go upward at this node's next sync.
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
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from appliance.auth.basic import basic_credentials
from appliance.auth.credential_checks import CREDENTIAL_CACHE_SECONDS
from appliance.auth.tokens import CredentialError, Credentials
from appliance.control.descendants import (
    find_descendant,
    find_sync_token,
    granted,
    served_tokens,
    unexpired_hashes,
)
from appliance.control.gateway_client import GatewayClient, GatewayError, ParentUnreachable
from appliance.control.hierarchy import settings_etag
from appliance.control.node import CONNECTED, NodeState
from appliance.oci.errors import ErrorCode, OCIError
from appliance.registry.access import basic_unauthorized
from appliance.registry.context import json_body
from appliance.storage.store import Store
from appliance.storage.timestamps import timestamp

log = logging.getLogger(__name__)

GATEWAY_REALM = "connected-registry gateway"
QUEUED_STATUS = "queued_status/"
REFRESH_MIN_INTERVAL = 2.0
FLUSH_EVERY = 30.0
# action of the path → its method
METHODS = {"activate": "POST", "deactivate": "POST", "settings": "GET", "status": "PUT"}


def unknown_registry(name: str) -> OCIError:
    return OCIError(ErrorCode.NAME_UNKNOWN, f"connected registry {name!r} not found")


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

    async def forward(self, request: web.Request, action: str) -> web.StreamResponse:
        """`action` for the path's descendant, once `authorize` let the caller: the parent's
        answer, or while it is unreachable what this node can answer itself."""
        name = request.match_info["name"]
        method = METHODS[action]
        body: bytes | None = None
        if action == "status":
            body = json.dumps(await json_body(request)).encode()
        elif method == "POST":
            body = await request.read()
        headers = {}
        if action == "settings" and "If-None-Match" in request.headers:
            headers["If-None-Match"] = request.headers["If-None-Match"]
        try:
            status, answer_headers, data = await self._forward(method, name, action, body, headers)
        except ParentUnreachable as err:
            return self._offline(request, name, action, body, err)
        if action == "status" and status < 300:
            self._drop_queued(name)
        self._reached_parent()
        if action == "settings" and status == 200:
            await self._follow(name, answer_headers.get("ETag"))
        headers = {
            key: answer_headers[key] for key in ("ETag", "Content-Type") if key in answer_headers
        }
        return web.Response(status=status, body=data or None, headers=headers)

    def feed_scope(self, name: str) -> tuple[str, ...]:
        """The repositories (names or patterns) of descendant `name`, whose change feed the
        caller proved it may read (`authorize` with message/read)."""
        cached = find_descendant(self.node.settings(), name)
        if cached is None:
            raise unknown_registry(name)
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
                raise unknown_registry(name)
            etag = settings_etag(cached)
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers={"ETag": etag})
            return web.json_response(cached, headers={"ETag": etag})
        if action == "status":
            self.node.set(self._queue_key(name), (body or b"{}").decode())
            return web.Response(status=204)
        raise OCIError(
            ErrorCode.PARENT_UNREACHABLE,
            f"{err.message}; only the root can guarantee a single active instance, so {action} "
            "waits until it is reachable",
        )

    # -- who may call ------------------------------------------------------------------------

    async def authorize(self, request: web.Request, name: str, permission: str) -> None:
        """Unless the caller's Basic credentials are a descendant's sync token that may do
        `permission` on descendant `name`, the OCIError to answer; refreshes the cached
        settings once first (a new registry, a rotated password)."""
        basic = basic_credentials(request.headers.get("Authorization", ""))
        if basic is None:
            message = "the gateway needs the sync token's Basic credentials"
            raise basic_unauthorized(GATEWAY_REALM, message)
        user, password = basic
        started = time.monotonic()
        try:
            await self._check(name, user, password, permission)
        except OCIError:
            if not await self._refresh(started):
                raise
            await self._check(name, user, password, permission)

    async def _check(self, name: str, user: str, password: str, permission: str) -> None:
        settings = self.node.settings()
        sync_token = find_sync_token(settings, user) if user else None
        if sync_token is None or not await self._verify(sync_token, user, password):
            raise basic_unauthorized(GATEWAY_REALM, "Incorrect Password")
        if permission not in granted(sync_token, name.lower()):
            message = f"token {user!r} may not {permission} for connected registry {name!r}"
            raise OCIError(ErrorCode.DENIED, message)
        if find_descendant(settings, name) is None:
            raise unknown_registry(name)

    async def _verify(self, sync_token: dict[str, Any], user: str, password: str) -> bool:
        if sync_token.get("status", "enabled") != "enabled":
            return False
        hashes = unexpired_hashes(sync_token, datetime.now(UTC))
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
            code = ErrorCode.__members__.get(err.code, ErrorCode.UNEXPECTED_RESPONSE)
            raise OCIError(code, err.message, status=502) from None

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
            with self.store.transaction():
                self.credentials.replace_from_parent(served_tokens(fresh.body))
                self.node.set("settings", json.dumps(fresh.body, sort_keys=True))
                if fresh.etag:
                    self.node.set("settings_etag", fresh.etag)
                else:
                    self.store.node.settings_etag = None
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
        self.node.set("last_contact", timestamp())
        if self.queued():
            task = asyncio.get_running_loop().create_task(self.flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- the status queue ------------------------------------------------------------------------

    def queued(self) -> dict[str, str]:
        """Queued status reports: descendant name → report (JSON text)."""
        return self.store.state_items(QUEUED_STATUS)

    def _queue_key(self, name: str) -> str:
        """Keyed by the name as the root spells it (the path's may differ in case)."""
        cached = find_descendant(self.node.settings(), name)
        return QUEUED_STATUS + (str(cached["name"]) if cached is not None else name)

    def _drop_queued(self, name: str) -> None:
        key = self._queue_key(name)
        if self.store.node.get(key) is not None:
            self.store.node.delete(key)

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
                        if self.store.node.get(key) == report:
                            self.store.node.delete(key)
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

