"""What every handler needs: the app's shared objects and the validated path parameters."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from appliance.oci.digests import Digest
from appliance.oci.errors import ErrorCode, OCIError
from appliance.oci.names import validate_name
from appliance.storage.store import Store
from appliance.sync.ondemand import OnDemand

STORE = web.AppKey("store", Store)
ON_DEMAND = web.AppKey("on_demand", OnDemand)
API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def store_of(request: web.Request) -> Store:
    return request.app[STORE]


def repository_of(request: web.Request) -> str:
    """The `<name>` of the path, validated by the spec's grammar (NAME_INVALID otherwise)."""
    return validate_name(request.match_info["name"])


def digest_of(request: web.Request, key: str = "digest") -> Digest:
    return Digest.parse(request.match_info[key])


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); BODY_INVALID for anything else."""
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise OCIError(ErrorCode.BODY_INVALID) from None
    if not isinstance(body, dict):
        raise OCIError(ErrorCode.BODY_INVALID)
    return body


# -- access requirements, declared beside each handler ------------------------------------------

LOGIN = "login"  # any authenticated caller (the /v2/ probe)
CATALOG = "catalog"  # registry:catalog:*


def requires(*needs: str) -> Callable[[Handler], Handler]:
    """Declare what a handler needs: repository actions (`content/read`, …) on the path's
    `<name>`, or LOGIN, or CATALOG. The access middleware enforces it before the handler runs."""

    def mark(handler: Handler) -> Handler:
        handler.required_access = frozenset(needs)  # type: ignore[attr-defined]
        return handler

    return mark


def required_access(request: web.Request) -> frozenset[str] | None:
    return getattr(request.match_info.handler, "required_access", None)
