"""Content discovery: tags list (end-8a/8b), `_catalog`, and the referrers API (end-12a/12b).

Lists are in lexical order; `n` and `last` page through them and a `Link: <…>; rel="next"` header
says there is more.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from aiohttp import web

from appliance.auth.scopes import METADATA_READ
from appliance.oci.errors import ErrorCode, OCIError
from appliance.oci.manifests import OCI_INDEX
from appliance.registry.access import IDENTITY, may_read
from appliance.registry.context import CATALOG, digest_of, repository_of, requires, store_of

# `_catalog` without `n` returns at most this many and a Link; tags lists are returned whole,
# since not every client follows Link on tags.
CATALOG_PAGE = 1000
MAX_PAGE = 10000


def _page_params(request: web.Request) -> tuple[int | None, str | None]:
    last = request.query.get("last") or None
    n = request.query.get("n")
    if n is None or n == "":
        return None, last
    # isdigit() alone also passes "²" and other digits int() refuses.
    if not (n.isascii() and n.isdigit()):
        raise OCIError(
            ErrorCode.UNSUPPORTED,
            "n must be a non-negative integer",
            status=400,
            detail={"n": n[:50]},
        )
    # Past MAX_PAGE the value does not matter, and int() refuses strings of over 4300 digits.
    digits = n.lstrip("0") or "0"
    if len(digits) > len(str(MAX_PAGE)):
        return MAX_PAGE, last
    return min(int(digits), MAX_PAGE), last


def _link(path: str, limit: int, last: str) -> str:
    return f'<{path}?{urlencode({"n": limit, "last": last})}>; rel="next"'


def _json(body: dict, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(), content_type="application/json", headers=headers
    )


@requires(METADATA_READ)
async def list_tags(request: web.Request) -> web.StreamResponse:
    repository = repository_of(request)
    limit, last = _page_params(request)
    if limit == 0:
        # Still a 404 for an unknown repository.
        store_of(request).tags(repository, 0, None)
        return _json({"name": repository, "tags": []})
    tags, more = store_of(request).tags(repository, limit, last)
    headers = {}
    if more and limit is not None:
        headers["Link"] = _link(f"/v2/{repository}/tags/list", limit, tags[-1])
    return _json({"name": repository, "tags": tags}, headers)


@requires(CATALOG)
async def catalog(request: web.Request) -> web.StreamResponse:
    """Repositories in lexical order; with auth on, only those the caller may read."""
    limit, last = _page_params(request)
    page = CATALOG_PAGE if limit is None else limit
    if page == 0:
        return _json({"repositories": []})
    identity = request.get(IDENTITY)
    store = store_of(request)
    names: list[str] = []
    more = False
    while len(names) < page:
        batch, more = store.repositories(page, last)
        names += [n for n in batch if may_read(identity, n)]
        if not more:
            break
        last = batch[-1]
    if len(names) > page:
        names, more = names[:page], True
    headers = {}
    if more and names:
        headers["Link"] = _link("/v2/_catalog", page, names[-1])
    return _json({"repositories": names}, headers)


@requires(METADATA_READ)
async def list_referrers(request: web.Request) -> web.StreamResponse:
    repository = repository_of(request)
    subject = digest_of(request)
    artifact_type = request.query.get("artifactType")
    referrers = store_of(request).referrers(repository, subject, artifact_type)
    headers = {"Content-Type": OCI_INDEX}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [r.descriptor() for r in referrers],
    }
    return web.Response(body=json.dumps(index).encode(), headers=headers)
