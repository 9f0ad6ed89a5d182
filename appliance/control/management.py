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
not allowed). Refusals are `{"errors": [{"code", "message"}]}` with the HierarchyError's status.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from appliance.control.gateway import HIERARCHY
from appliance.control.hierarchy import INVALID, HierarchyError
from appliance.control.management_client import LocalManagement
from appliance.control.node import CLOUD
from appliance.registry.access import CREDENTIALS, basic_credentials
from appliance.registry.context import store_of

PREFIX = "/manage/v1/connected-registries"

Operation = Callable[[web.Request, LocalManagement], Awaitable[tuple[int, Any]]]


def _error(status: int, code: str, message: str) -> web.Response:
    headers = (
        {"WWW-Authenticate": 'Basic realm="connected-registry management"'}
        if status == 401
        else None
    )
    return web.json_response(
        {"errors": [{"code": code, "message": message}]}, status=status, headers=headers
    )


async def _refuse_caller(request: web.Request) -> web.Response | None:
    """The refusal for anyone but the admin token on a root; None to go on."""
    store = store_of(request)
    if store.state("role") != CLOUD:
        return _error(404, "NAME_UNKNOWN", "this node is not a root: it has no management API")
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return _error(
            401, "UNAUTHORIZED", "the management API needs the admin token's Basic credentials"
        )
    user, password = basic_credentials(value)
    token = await request.app[CREDENTIALS].authenticate(user, password)
    if token is None:
        return _error(401, "UNAUTHORIZED", "invalid username or password")
    if token.name != store.state("admin_token"):
        return _error(403, "DENIED", f"token {token.name!r} is not this root's admin token")
    return None


def _managed(operation: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        refusal = await _refuse_caller(request)
        if refusal is not None:
            return refusal
        management = LocalManagement(request.app[HIERARCHY], store_of(request))
        try:
            status, data = await operation(request, management)
        except HierarchyError as err:
            return _error(err.status, err.code, err.message)
        return web.json_response(data, status=status)

    return handler


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise HierarchyError(INVALID, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise HierarchyError(INVALID, "the body must be a JSON object")
    return body


def _flag(request: web.Request, key: str) -> bool:
    return request.query.get(key, "").lower() in ("true", "1")


def _strings(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HierarchyError(INVALID, f"{key} must be a list of strings")
    return value


async def create(request: web.Request, manage: LocalManagement) -> tuple[int, Any]:
    return 201, manage.create(await _body(request))


async def list_(request: web.Request, manage: LocalManagement) -> tuple[int, Any]:
    parent = request.query.get("parent") or None
    return 200, manage.list(parent, _flag(request, "noChildren"))


async def show(request: web.Request, manage: LocalManagement) -> tuple[int, Any]:
    return 200, manage.show(request.match_info["name"])


async def update(request: web.Request, manage: LocalManagement) -> tuple[int, Any]:
    return 200, manage.update(request.match_info["name"], await _body(request))


async def delete(request: web.Request, manage: LocalManagement) -> tuple[int, Any]:
    commands = manage.delete(request.match_info["name"], cleanup=_flag(request, "cleanup"))
    return 200, {"commands": commands}


async def deactivate(request: web.Request, manage: LocalManagement) -> tuple[int, Any]:
    return 200, manage.deactivate(request.match_info["name"])


async def get_settings(request: web.Request, manage: LocalManagement) -> tuple[int, Any]:
    body = await _body(request)
    unknown = set(body) - {"generatePassword", "parentProtocol"}
    if unknown:
        raise HierarchyError(
            INVALID,
            f"unknown field {sorted(unknown)[0]!r}; the fields are generatePassword, parentProtocol"
        )
    settings = manage.get_settings(
        request.match_info["name"], body.get("parentProtocol"), body.get("generatePassword")
    )
    return 200, settings


async def client_tokens(request: web.Request, manage: LocalManagement) -> tuple[int, Any]:
    return 200, manage.client_tokens(request.match_info["name"])


async def permissions(request: web.Request, manage: LocalManagement) -> tuple[int, Any]:
    return 200, manage.permissions(request.match_info["name"])


async def update_permissions(request: web.Request, manage: LocalManagement) -> tuple[int, Any]:
    body = await _body(request)
    name = request.match_info["name"]
    return 200, manage.update_permissions(name, _strings(body, "add"), _strings(body, "remove"))


async def resync(request: web.Request, manage: LocalManagement) -> tuple[int, Any]:
    return 200, manage.resync(request.match_info["name"])


def add_routes(app: web.Application) -> None:
    r = app.router
    one = f"{PREFIX}/{{name}}"
    r.add_post(PREFIX, _managed(create))
    r.add_get(PREFIX, _managed(list_))
    r.add_get(one, _managed(show))
    r.add_patch(one, _managed(update))
    r.add_delete(one, _managed(delete))
    r.add_post(f"{one}/deactivate", _managed(deactivate))
    r.add_post(f"{one}/get-settings", _managed(get_settings))
    r.add_get(f"{one}/client-tokens", _managed(client_tokens))
    r.add_get(f"{one}/permissions", _managed(permissions))
    r.add_patch(f"{one}/permissions", _managed(update_permissions))
    r.add_post(f"{one}/resync", _managed(resync))
