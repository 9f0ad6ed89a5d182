"""What every handler needs: the app's shared objects and the validated path parameters."""

from __future__ import annotations

from aiohttp import web

from appliance.oci.digests import Digest
from appliance.oci.names import validate_name
from appliance.storage.store import Store

STORE = web.AppKey("store", Store)
API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")


def store_of(request: web.Request) -> Store:
    return request.app[STORE]


def repository_of(request: web.Request) -> str:
    """The `<name>` of the path, validated by the spec's grammar (NAME_INVALID otherwise)."""
    return validate_name(request.match_info["name"])


def digest_of(request: web.Request, key: str = "digest") -> Digest:
    return Digest.parse(request.match_info[key])
