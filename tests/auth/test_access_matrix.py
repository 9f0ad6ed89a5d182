"""The access matrix: tokens, scope-map patterns, repositories and operations, by Basic
credentials and by the Bearer flow (DESIGN.md §7 "Actions", "Repository patterns").

Every action a scope map allows works; every other is refused the way a client can act on:
401 `UNAUTHORIZED` with the Bearer challenge for no or bad credentials, 403 `DENIED` for good
credentials beyond their scope map, 401 `insufficient_scope` for a bearer token that lacks a
scope its scope map would give. One server serves the whole module, seeded once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from support.auth import (
    ALL_ACTIONS,
    READER,
    AuthServer,
    Seeded,
    TokenCreds,
    assert_refused,
    assert_unauthorized,
    auth_server,
    basic,
    bearer_for,
    parse_challenge,
    seed_repository,
    unique,
)
from support.oci import OCI_MANIFEST, digest_of, make_image, push_blob, push_image

from appliance.auth.scopes import allowed_actions, matches
from appliance.auth.tokens import parse_permissions

REPOS = ("team/app", "team/sub/app", "other/app", "app")

PATTERNS = {"literal": "team/app", "single": "team/*", "deep": "team/**", "top": "*"}
ACTION_SETS: dict[str, tuple[str, ...]] = {"reader": READER, "full": ALL_ACTIONS}
# One action at a time, on `team/**`.
GRANULAR: dict[str, tuple[str, ...]] = {
    "puller": ("content/read",),
    "lister": ("metadata/read",),
    "deleter": ("content/delete",),
    "pusher": ("content/read", "content/write"),
}

TOKENS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    f"{kind}-{role}": [(pattern, actions)]
    for kind, pattern in PATTERNS.items()
    for role, actions in ACTION_SETS.items()
}
TOKENS.update({f"deep-{role}": [("team/**", actions)] for role, actions in GRANULAR.items()})

# What each operation needs, and the Docker scope actions of its challenge.
NEEDS: dict[str, tuple[frozenset[str], str]] = {
    "pull": (frozenset({"content/read"}), "pull"),
    "push": (frozenset({"content/read", "content/write"}), "pull,push"),
    "delete-manifest": (frozenset({"content/delete"}), "delete"),
    "delete-blob": (frozenset({"content/delete"}), "delete"),
    "tags": (frozenset({"metadata/read"}), "pull"),
    "referrers": (frozenset({"metadata/read"}), "pull"),
}

READ = frozenset({"content/read", "metadata/read"})


def permitted(token: str, repository: str) -> frozenset[str]:
    """What the token's scope map allows on `repository`, by the design's pattern rules
    (computed here independently of the server's matcher)."""
    granted: set[str] = set()
    for pattern, actions in TOKENS[token]:
        if _pattern_matches(pattern, repository):
            granted |= set(actions)
    return frozenset(granted)


def _pattern_matches(pattern: str, repository: str) -> bool:
    # `*` within one path segment, `**` across segments: spelled out for the four patterns used.
    table = {
        "team/app": {"team/app"},
        "team/*": {"team/app"},
        "team/**": {"team/app", "team/sub/app"},
        "*": {"app"},
    }
    return repository in table[pattern]


def test_the_matrix_agrees_with_the_server_pattern_matcher() -> None:
    """Guard for the table above: the server's matcher gives the same answers."""
    for token, permissions in TOKENS.items():
        perms = parse_permissions([(r, list(a)) for r, a in permissions])
        for repository in REPOS:
            assert allowed_actions(perms, repository) == permitted(token, repository), token
    assert matches("team/**", "team/sub/app") and not matches("team/*", "team/sub/app")


@dataclass
class Matrix:
    server: AuthServer
    admin: str
    seeded: dict[str, Seeded]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    with auth_server(tmp_path_factory.mktemp("matrix") / "data") as server:
        admin = server.make_token("admin", [("**", ALL_ACTIONS)])
        for name, permissions in TOKENS.items():
            server.make_token(name, permissions)

        async def seed() -> dict[str, Seeded]:
            async with aiohttp.ClientSession(headers={"Authorization": admin.header}) as http:
                return {repo: await seed_repository(http, server.url, repo) for repo in REPOS}

        yield Matrix(server, admin.header, asyncio.run(seed()))


Refusal = Callable[[aiohttp.ClientResponse], Awaitable[None]] | None


async def _status(
    http: aiohttp.ClientSession, method: str, url: str, auth: str, accept: str | None = None
) -> int:
    headers = {"Authorization": auth}
    if accept:
        headers["Accept"] = accept
    async with http.request(method, url, headers=headers) as resp:
        await resp.read()
        return resp.status


# -- the operations: each does its requests, and checks either success or `refuse` ---------------


async def op_pull(m: Matrix, client: aiohttp.ClientSession, repo: str, refuse: Refusal) -> None:
    base, seeded = m.server.url, m.seeded[repo]
    config = seeded.image.blobs[0]
    requests = [
        ("GET", f"{base}/v2/{repo}/manifests/v1", seeded.image.manifest),
        ("HEAD", f"{base}/v2/{repo}/manifests/{seeded.image.digest}", None),
        ("GET", f"{base}/v2/{repo}/blobs/{digest_of(config)}", config),
        ("HEAD", f"{base}/v2/{repo}/blobs/{digest_of(config)}", None),
    ]
    for method, url, expected in requests:
        async with client.request(method, url, headers={"Accept": OCI_MANIFEST}) as resp:
            if refuse is None:
                body = await resp.read()
                assert resp.status == 200, f"{method} {url}: {resp.status} {body[:200]!r}"
                if expected is not None:
                    assert body == expected
            else:
                await refuse(resp)


async def op_push(m: Matrix, client: aiohttp.ClientSession, repo: str, refuse: Refusal) -> None:
    base = m.server.url
    image = make_image(seed=unique("push"), layers=1)
    async with aiohttp.ClientSession() as plain:
        if refuse is None:
            await push_image(client, base, repo, image, unique("tag"))
            status = await _status(plain, "GET", f"{base}/v2/{repo}/manifests/{image.digest}",
                                   m.admin, OCI_MANIFEST)
            assert status == 200
            return
        async with client.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
            await refuse(resp)
            blob = image.blobs[0]
        async with client.post(
            f"{base}/v2/{repo}/blobs/uploads/?digest={digest_of(blob)}", data=blob,
            headers={"Content-Type": "application/octet-stream"},
        ) as resp:
            await refuse(resp)
        async with client.put(
            f"{base}/v2/{repo}/manifests/{image.digest}",
            data=image.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        ) as resp:
            await refuse(resp)
        # Nothing was stored.
        url = f"{base}/v2/{repo}/blobs/{digest_of(blob)}"
        assert await _status(plain, "HEAD", url, m.admin) == 404
        url = f"{base}/v2/{repo}/manifests/{image.digest}"
        assert await _status(plain, "GET", url, m.admin, OCI_MANIFEST) == 404


async def op_delete_manifest(
    m: Matrix, client: aiohttp.ClientSession, repo: str, refuse: Refusal
) -> None:
    base = m.server.url
    image = make_image(seed=unique("doomed"), layers=1)
    async with aiohttp.ClientSession(headers={"Authorization": m.admin}) as admin:
        await push_image(admin, base, repo, image)
        url = f"{base}/v2/{repo}/manifests/{image.digest}"
        async with client.delete(url) as resp:
            if refuse is None:
                assert resp.status == 202, await resp.text()
            else:
                await refuse(resp)
        expected = 404 if refuse is None else 200
        assert await _status(admin, "GET", url, m.admin, OCI_MANIFEST) == expected


async def op_delete_blob(
    m: Matrix, client: aiohttp.ClientSession, repo: str, refuse: Refusal
) -> None:
    base = m.server.url
    async with aiohttp.ClientSession(headers={"Authorization": m.admin}) as admin:
        digest = await push_blob(admin, base, repo, unique("doomed blob").encode())
        url = f"{base}/v2/{repo}/blobs/{digest}"
        async with client.delete(url) as resp:
            if refuse is None:
                assert resp.status == 202, await resp.text()
            else:
                await refuse(resp)
        expected = 404 if refuse is None else 200
        assert await _status(admin, "HEAD", url, m.admin) == expected


async def op_tags(m: Matrix, client: aiohttp.ClientSession, repo: str, refuse: Refusal) -> None:
    async with client.get(f"{m.server.url}/v2/{repo}/tags/list") as resp:
        if refuse is None:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            assert body["name"] == repo and "v1" in body["tags"]
        else:
            await refuse(resp)


async def op_referrers(
    m: Matrix, client: aiohttp.ClientSession, repo: str, refuse: Refusal
) -> None:
    seeded = m.seeded[repo]
    url = f"{m.server.url}/v2/{repo}/referrers/{seeded.image.digest}"
    async with client.get(url) as resp:
        if refuse is None:
            assert resp.status == 200, await resp.text()
            index = await resp.json(content_type=None)
            assert [d["digest"] for d in index["manifests"]] == [seeded.referrer.digest]
        else:
            await refuse(resp)


OPS = {
    "pull": op_pull,
    "push": op_push,
    "delete-manifest": op_delete_manifest,
    "delete-blob": op_delete_blob,
    "tags": op_tags,
    "referrers": op_referrers,
}
assert OPS.keys() == NEEDS.keys()

CASES = [
    pytest.param(token, repo, op, id=f"{token}:{repo}:{op}")
    for token in TOKENS
    for repo in (REPOS if not token.startswith("deep-") or token in ("deep-reader", "deep-full")
                 else ("team/sub/app", "other/app"))
    for op in OPS
]


async def _authorization(
    m: Matrix, http: aiohttp.ClientSession, token: TokenCreds, method: str, repo: str
) -> str:
    if method == "basic":
        return token.header
    return await bearer_for(
        http, m.server.url, token.header, [f"repository:{repo}:pull,push,delete"]
    )


async def _denied(resp: aiohttp.ClientResponse) -> None:
    await assert_refused(resp, 403, "DENIED")


@pytest.mark.parametrize("method", ["basic", "bearer"])
@pytest.mark.parametrize(("token", "repo", "op"), CASES)
async def test_token_on_repository(
    matrix: Matrix, method: str, token: str, repo: str, op: str
) -> None:
    allowed = NEEDS[op][0] <= permitted(token, repo)
    async with aiohttp.ClientSession() as http:
        auth = await _authorization(matrix, http, matrix.server.tokens[token], method, repo)
    async with aiohttp.ClientSession(headers={"Authorization": auth}) as client:
        await OPS[op](matrix, client, repo, None if allowed else _denied)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("repo", REPOS)
async def test_anonymous_is_challenged(matrix: Matrix, repo: str, op: str) -> None:
    scope = f"repository:{repo}:{NEEDS[op][1]}"

    async def challenged(resp: aiohttp.ClientResponse) -> None:
        await assert_unauthorized(resp, matrix.server.host, scope)

    async with aiohttp.ClientSession() as client:
        await OPS[op](matrix, client, repo, challenged)


async def _bad_credentials(resp: aiohttp.ClientResponse, host: str, error: str | None) -> None:
    await assert_refused(resp, 401, "UNAUTHORIZED")
    scheme, params = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
    assert scheme == "Bearer"
    assert params["realm"] == f"http://{host}/oauth2/token"
    assert params["service"] == host
    if error:
        assert params.get("error") == error


BAD_CREDENTIALS = {
    "wrong-password": lambda: basic("deep-full", "not-the-password"),
    "unknown-token": lambda: basic("nobody-here", "whatever"),
    "no-password": lambda: basic("deep-full", ""),
    "garbled-basic": lambda: "Basic !!!not-base64!!!",
    "garbage-bearer": lambda: "Bearer not.a.jwt",
    "empty-bearer": lambda: "Bearer ",
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("bad", list(BAD_CREDENTIALS))
async def test_bad_credentials_are_401(matrix: Matrix, bad: str, op: str) -> None:
    error = "invalid_token" if bad.endswith("bearer") else None

    async def refused(resp: aiohttp.ClientResponse) -> None:
        await _bad_credentials(resp, matrix.server.host, error)

    async with aiohttp.ClientSession(headers={"Authorization": BAD_CREDENTIALS[bad]()}) as client:
        await OPS[op](matrix, client, "team/app", refused)


# -- /v2/ and _catalog -------------------------------------------------------------------------


async def test_base_endpoint(matrix: Matrix) -> None:
    base, host = matrix.server.url, matrix.server.host
    token = matrix.server.tokens["deep-deleter"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v2/") as resp:
            await assert_unauthorized(resp, host, None)
        async with http.get(f"{base}/v2/", headers={"Authorization": token.header}) as resp:
            assert resp.status == 200
        auth = await bearer_for(http, base, token.header, [])
        async with http.get(f"{base}/v2/", headers={"Authorization": auth}) as resp:
            assert resp.status == 200
        async with http.get(f"{base}/v2/", headers={"Authorization": basic("x", "y")}) as resp:
            await _bad_credentials(resp, host, None)


def _readable(token: str) -> list[str]:
    return sorted(r for r in REPOS if permitted(token, r) & READ)


@pytest.mark.parametrize("method", ["basic", "bearer"])
@pytest.mark.parametrize("token", [*TOKENS, "admin"])
async def test_catalog_lists_only_readable_repositories(
    matrix: Matrix, method: str, token: str
) -> None:
    base = matrix.server.url
    creds = matrix.server.tokens[token]
    expected = sorted(REPOS) if token == "admin" else _readable(token)
    async with aiohttp.ClientSession() as http:
        auth = creds.header
        if method == "bearer":
            auth = await bearer_for(http, base, creds.header, ["registry:catalog:*"])
        async with http.get(f"{base}/v2/_catalog", headers={"Authorization": auth}) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["repositories"] == expected


async def test_catalog_refusals(matrix: Matrix) -> None:
    base, host = matrix.server.url, matrix.server.host
    creds = matrix.server.tokens["deep-full"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v2/_catalog") as resp:
            await assert_unauthorized(resp, host, "registry:catalog:*")
        # A bearer token without the catalog scope: fetch a bigger one.
        auth = await bearer_for(http, base, creds.header, ["repository:team/app:pull"])
        async with http.get(f"{base}/v2/_catalog", headers={"Authorization": auth}) as resp:
            await assert_unauthorized(resp, host, "registry:catalog:*", "insufficient_scope")
        # An anonymous bearer token never gets the catalog.
        auth = await bearer_for(http, base, None, ["registry:catalog:*"])
        async with http.get(f"{base}/v2/_catalog", headers={"Authorization": auth}) as resp:
            await assert_unauthorized(resp, host, "registry:catalog:*")


# -- a bearer token that lacks a scope its scope map allows ---------------------------------------


@pytest.mark.parametrize(
    ("granted", "op", "challenge_actions"),
    [
        ("pull", "push", "pull,push"),
        ("pull", "delete-manifest", "delete"),
        ("pull", "delete-blob", "delete"),
        ("delete", "pull", "pull"),
        ("delete", "tags", "pull"),
        ("delete", "referrers", "pull"),
        ("push", "delete-blob", "delete"),
    ],
)
async def test_bearer_without_a_scope_its_map_allows_is_insufficient_scope(
    matrix: Matrix, granted: str, op: str, challenge_actions: str
) -> None:
    repo = "team/sub/app"
    creds = matrix.server.tokens["deep-full"]
    scope = f"repository:{repo}:{challenge_actions}"

    async def insufficient(resp: aiohttp.ClientResponse) -> None:
        await assert_unauthorized(resp, matrix.server.host, scope, "insufficient_scope")

    async with aiohttp.ClientSession() as http:
        auth = await bearer_for(http, matrix.server.url, creds.header,
                                [f"repository:{repo}:{granted}"])
    async with aiohttp.ClientSession(headers={"Authorization": auth}) as client:
        await OPS[op](matrix, client, repo, insufficient)


async def test_bearer_for_another_repository_follows_the_scope_map(matrix: Matrix) -> None:
    """A JWT for team/app used on team/sub/app: the map allows it → 401 insufficient_scope
    (fetch a token for it); used on other/app, which the map does not allow → 403."""
    creds = matrix.server.tokens["deep-full"]
    async with aiohttp.ClientSession() as http:
        auth = await bearer_for(http, matrix.server.url, creds.header,
                                ["repository:team/app:pull,push,delete"])
    async with aiohttp.ClientSession(headers={"Authorization": auth}) as client:
        await op_tags(matrix, client, "team/app", None)

        async def insufficient(resp: aiohttp.ClientResponse) -> None:
            await assert_unauthorized(resp, matrix.server.host, "repository:team/sub/app:pull",
                                      "insufficient_scope")

        await op_pull(matrix, client, "team/sub/app", insufficient)
        await op_pull(matrix, client, "other/app", _denied)


# -- one repository's content through another's name ---------------------------------------------


async def _mount(
    client: aiohttp.ClientSession, base: str, repo: str, digest: str, source: str | None
) -> int:
    query = f"mount={digest}" + (f"&from={source}" if source else "")
    async with client.post(f"{base}/v2/{repo}/blobs/uploads/?{query}") as resp:
        await resp.read()
        if resp.status == 202:  # an ordinary session instead: cancel it
            location = resp.headers["Location"]
            url = base + location if location.startswith("/") else location
            async with client.delete(url) as cancelled:
                await cancelled.read()
        return resp.status


@pytest.mark.parametrize("method", ["basic", "bearer"])
async def test_mount_needs_read_access_to_the_source(matrix: Matrix, method: str) -> None:
    """deep-pusher may push to team/sub/app and read team/app, not other/app: a mount from
    other/app (named or found automatically) is an ordinary upload session, and links nothing."""
    base, target = matrix.server.url, "team/sub/app"
    creds = matrix.server.tokens["deep-pusher"]
    hidden = digest_of(matrix.seeded["other/app"].image.blobs[1])
    readable = digest_of(matrix.seeded["team/app"].image.blobs[1])
    async with aiohttp.ClientSession() as http:
        auth = creds.header
        if method == "bearer":
            auth = await bearer_for(http, base, creds.header, [
                f"repository:{target}:pull,push", "repository:team/app:pull",
                "repository:other/app:pull",
            ])
    async with aiohttp.ClientSession(headers={"Authorization": auth}) as client:
        assert await _mount(client, base, target, hidden, "other/app") == 202
        assert await _mount(client, base, target, hidden, None) == 202
        url = f"{base}/v2/{target}/blobs/{hidden}"
        assert await _status(client, "HEAD", url, matrix.admin) == 404
        assert await _mount(client, base, target, readable, "team/app") == 201
        assert await _status(client, "HEAD", f"{base}/v2/{target}/blobs/{readable}", auth) == 200


async def test_the_challenge_of_a_mount_asks_pull_on_the_source_too(matrix: Matrix) -> None:
    """No credentials: the 401 for a mount names the target's pull,push and the source's pull,
    space-separated in one scope parameter, as distribution's challenge does."""
    base, target = matrix.server.url, "team/sub/app"
    blob = digest_of(matrix.seeded["team/app"].image.blobs[0])
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{base}/v2/{target}/blobs/uploads/?mount={blob}&from=team/app") as resp,
    ):
        await assert_unauthorized(
            resp, matrix.server.host, f"repository:{target}:pull,push repository:team/app:pull"
        )


async def test_a_token_for_exactly_the_challenged_scope_mounts(matrix: Matrix) -> None:
    """A JWT for the target only (what an earlier challenge asked): the mount is refused with
    insufficient_scope naming both repositories; a token asked with that scope, passed on as one
    `scope=`, mounts the blob (201) instead of opening an upload."""
    base, host, target = matrix.server.url, matrix.server.host, "team/sub/app"
    creds = matrix.server.tokens["deep-full"]
    blob = digest_of(matrix.seeded["team/app"].image.blobs[0])
    mount = f"{base}/v2/{target}/blobs/uploads/?mount={blob}&from=team/app"
    both = f"repository:{target}:pull,push repository:team/app:pull"
    async with aiohttp.ClientSession() as http:
        auth = await bearer_for(http, base, creds.header, [f"repository:{target}:pull,push"])
        async with http.post(mount, headers={"Authorization": auth}) as resp:
            await assert_unauthorized(resp, host, both, "insufficient_scope")
            _, challenge = parse_challenge(resp.headers["WWW-Authenticate"])
        auth = await bearer_for(http, base, creds.header, [challenge["scope"]])
        async with aiohttp.ClientSession(headers={"Authorization": auth}) as client:
            assert await _mount(client, base, target, blob, "team/app") == 201
            assert await _status(client, "HEAD", f"{base}/v2/{target}/blobs/{blob}", auth) == 200


async def test_content_of_an_unreadable_repository_is_not_reachable_by_digest(
    matrix: Matrix,
) -> None:
    """A token that may read team/app asks team/app for other/app's blobs and manifest, and
    may push to team/sub/app a manifest that references other/app's blobs: all unknown."""
    base = matrix.server.url
    other = matrix.seeded["other/app"]
    reader = matrix.server.tokens["deep-full"].header
    async with aiohttp.ClientSession(headers={"Authorization": reader}) as client:
        for blob in other.image.blobs:
            async with client.get(f"{base}/v2/team/app/blobs/{digest_of(blob)}") as resp:
                await assert_refused(resp, 404, "BLOB_UNKNOWN")
        async with client.get(f"{base}/v2/team/app/manifests/{other.image.digest}",
                              headers={"Accept": OCI_MANIFEST}) as resp:
            await assert_refused(resp, 404, "MANIFEST_UNKNOWN")
        async with client.get(f"{base}/v2/team/app/referrers/{other.image.digest}") as resp:
            assert resp.status == 200
            assert (await resp.json(content_type=None))["manifests"] == []
        async with client.put(f"{base}/v2/team/sub/app/manifests/stolen",
                              data=other.image.manifest,
                              headers={"Content-Type": OCI_MANIFEST}) as resp:
            await assert_refused(resp, 400, "MANIFEST_BLOB_UNKNOWN")
