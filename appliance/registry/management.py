"""The root's management API: `az acr connected-registry` over HTTP, for `cloud … --registry URL`.

Routes, under `/manage/v1/connected-registries` (JSON in and out, camelCase):

    POST   /                          create                    → 201 the resource
    GET    /?parent=P&noChildren=true list                      → 200 [resource, …]
    GET    /{name}                    show                      → 200 the resource
    PATCH  /{name}                    update                    → 200 the resource
    DELETE /{name}?cleanup=true       delete                    → 200 {"commands": [...]}
    POST   /{name}/deactivate         deactivate                → 200 the resource
    POST   /{name}/get-settings       {generatePassword, parentProtocol} → 200 {connectionString, …}
    GET    /{name}/client-tokens      list-client-tokens        → 200 [token, …]
    GET    /{name}/permissions        permissions show          → 200 the sync scope map
    PATCH  /{name}/permissions        {add: [...], remove: [...]} → 200 the sync scope map
    POST   /{name}/resync             resync                    → 200 the resource

Only a root has it (404 elsewhere). The caller authenticates with HTTP Basic as the admin token
`cloud init` made: no or wrong credentials → 401, another valid token → 403 (it is known, just
not allowed); each handler declares it (`@admin_only`). Refusals are `OCIError`s, which the
middleware answers with the OCI error body; the hierarchy's keep their code and status.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from appliance.auth.basic import basic_credentials
from appliance.control.management_client import LocalManagement
from appliance.control.node import CLOUD
from appliance.oci.errors import ErrorCode, OCIError
from appliance.registry.access import CREDENTIALS, basic_unauthorized
from appliance.registry.context import Handler, json_body, store_of
from appliance.registry.errors import hierarchy_refusals
from appliance.registry.gateway import HIERARCHY

PREFIX = "/manage/v1/connected-registries"
REALM = "connected-registry management"


def admin_only(handler: Handler) -> Handler:
    """Declare that a handler answers the admin token on a root, and nobody else."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        store = store_of(request)
        if store.node.role != CLOUD:
            raise OCIError(
                ErrorCode.NAME_UNKNOWN, "this node is not a root: it has no management API"
            )
        basic = basic_credentials(request.headers.get("Authorization", ""))
        if basic is None:
            raise basic_unauthorized(
                REALM, "the management API needs the admin token's Basic credentials"
            )
        token = await request.app[CREDENTIALS].authenticate(*basic)
        if token is None:
            raise basic_unauthorized(REALM, "invalid username or password")
        if token.name != store.node.admin_token:
            raise OCIError(
                ErrorCode.DENIED, f"token {token.name!r} is not this root's admin token"
            )
        return await handler(request)

    return checked


def _management(request: web.Request) -> LocalManagement:
    return LocalManagement(request.app[HIERARCHY], store_of(request))


def _flag(request: web.Request, key: str) -> bool:
    return request.query.get(key, "").lower() in ("true", "1")


def _strings(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OCIError(ErrorCode.INVALID, f"{key} must be a list of strings")
    return value


@admin_only
async def create(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    with hierarchy_refusals():
        return web.json_response(_management(request).create(body), status=201)


@admin_only
async def list_(request: web.Request) -> web.StreamResponse:
    parent = request.query.get("parent") or None
    with hierarchy_refusals():
        return web.json_response(_management(request).list(parent, _flag(request, "noChildren")))


@admin_only
async def show(request: web.Request) -> web.StreamResponse:
    with hierarchy_refusals():
        return web.json_response(_management(request).show(request.match_info["name"]))


@admin_only
async def update(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    with hierarchy_refusals():
        return web.json_response(_management(request).update(request.match_info["name"], body))


@admin_only
async def delete(request: web.Request) -> web.StreamResponse:
    cleanup = _flag(request, "cleanup")
    with hierarchy_refusals():
        commands = _management(request).delete(request.match_info["name"], cleanup=cleanup)
    return web.json_response({"commands": commands})


@admin_only
async def deactivate(request: web.Request) -> web.StreamResponse:
    with hierarchy_refusals():
        return web.json_response(_management(request).deactivate(request.match_info["name"]))


@admin_only
async def get_settings(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    unknown = set(body) - {"generatePassword", "parentProtocol"}
    if unknown:
        raise OCIError(
            ErrorCode.INVALID,
            f"unknown field {sorted(unknown)[0]!r}; "
            "the fields are generatePassword, parentProtocol",
        )
    with hierarchy_refusals():
        settings = _management(request).get_settings(
            request.match_info["name"], body.get("parentProtocol"), body.get("generatePassword")
        )
    return web.json_response(settings)


@admin_only
async def client_tokens(request: web.Request) -> web.StreamResponse:
    with hierarchy_refusals():
        return web.json_response(_management(request).client_tokens(request.match_info["name"]))


@admin_only
async def permissions(request: web.Request) -> web.StreamResponse:
    with hierarchy_refusals():
        return web.json_response(_management(request).permissions(request.match_info["name"]))


@admin_only
async def update_permissions(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    add, remove = _strings(body, "add"), _strings(body, "remove")
    with hierarchy_refusals():
        answer = _management(request).update_permissions(request.match_info["name"], add, remove)
    return web.json_response(answer)


@admin_only
async def resync(request: web.Request) -> web.StreamResponse:
    with hierarchy_refusals():
        return web.json_response(_management(request).resync(request.match_info["name"]))


def add_routes(app: web.Application) -> None:
    r = app.router
    one = f"{PREFIX}/{{name}}"
    r.add_post(PREFIX, create)
    r.add_get(PREFIX, list_)
    r.add_get(one, show)
    r.add_patch(one, update)
    r.add_delete(one, delete)
    r.add_post(f"{one}/deactivate", deactivate)
    r.add_post(f"{one}/get-settings", get_settings)
    r.add_get(f"{one}/client-tokens", client_tokens)
    r.add_get(f"{one}/permissions", permissions)
    r.add_patch(f"{one}/permissions", update_permissions)
    r.add_post(f"{one}/resync", resync)
