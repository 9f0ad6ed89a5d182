"""The node's mode and the server's configuration, as a client sees them: a ReadOnly node
(with auth on, by Basic and by Bearer, and with auth off), anonymous pull from
`[auth] anonymous_pull`, and the secrets the server keeps (the signing key's mode, no password in
the log)."""

from __future__ import annotations

import asyncio
import base64
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from support.auth import (
    ALL_ACTIONS,
    READER,
    AuthServer,
    Seeded,
    access_of,
    assert_refused,
    assert_unauthorized,
    auth_server,
    basic,
    bearer_for,
    fetch_token,
    seed_repository,
    write_config,
)
from support.oci import OCI_MANIFEST, digest_of, make_image, push_blob
from support.server import RegistryProcess

from appliance.storage.store import Store

REPO = "team/app"

# -- ReadOnly -------------------------------------------------------------------------------------


@dataclass
class ReadOnlyNode:
    url: str
    authorization: dict[str, str]  # the fully privileged client's headers
    seeded: Seeded
    spare_blob: str  # a blob a delete would remove
    open_upload: str  # an upload session started while the node was still ReadWrite


@pytest.fixture(scope="module", params=["basic", "bearer", "no-auth"])
def read_only(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReadOnlyNode]:
    data_dir = tmp_path_factory.mktemp("read-only") / "data"
    kind = request.param

    async def seed(url: str, headers: dict[str, str]) -> tuple[Seeded, str, str]:
        async with aiohttp.ClientSession(headers=headers) as http:
            seeded = await seed_repository(http, url, REPO)
            spare = await push_blob(http, url, REPO, b"a spare blob")
            async with http.post(f"{url}/v2/{REPO}/blobs/uploads/") as resp:
                assert resp.status == 202
                location = resp.headers["Location"]
        return seeded, spare, url + location if location.startswith("/") else location

    if kind == "no-auth":
        process = RegistryProcess(data_dir).start()
        try:
            seeded, spare, upload = asyncio.run(seed(process.url, {}))
            store = Store(data_dir)
            store.node.mode = "ReadOnly"
            store.close()
            yield ReadOnlyNode(process.url, {}, seeded, spare, upload)
        finally:
            process.stop()
        return

    with auth_server(data_dir) as server:
        admin = server.make_token("admin", [("**", ALL_ACTIONS)])
        seeded, spare, upload = asyncio.run(seed(server.url, {"Authorization": admin.header}))
        server.store.node.mode = "ReadOnly"
        authorization = admin.header
        if kind == "bearer":

            async def token() -> str:
                async with aiohttp.ClientSession() as http:
                    return await bearer_for(
                        http, server.url, admin.header,
                        [f"repository:{REPO}:pull,push,delete", "repository:newrepo:push",
                         "registry:catalog:*"],
                    )

            authorization = asyncio.run(token())
        yield ReadOnlyNode(server.url, {"Authorization": authorization}, seeded, spare, upload)


async def test_read_only_refuses_pushes(read_only: ReadOnlyNode) -> None:
    base = read_only.url
    image = make_image(seed="read-only push", layers=1)
    blob = image.blobs[0]
    mounted = digest_of(read_only.seeded.image.blobs[0])
    upload = read_only.open_upload
    finish = f"{upload}{'&' if '?' in upload else '?'}digest={digest_of(blob)}"
    async with aiohttp.ClientSession(headers=read_only.authorization) as http:
        requests = [
            ("POST", f"{base}/v2/{REPO}/blobs/uploads/", None, {}),
            ("POST", f"{base}/v2/{REPO}/blobs/uploads/?digest={digest_of(blob)}", blob,
             {"Content-Type": "application/octet-stream"}),
            ("POST", f"{base}/v2/newrepo/blobs/uploads/", None, {}),
            ("POST", f"{base}/v2/{REPO}/blobs/uploads/?mount={mounted}&from=other/app", None, {}),
            ("PATCH", upload, blob, {"Content-Type": "application/octet-stream"}),
            ("PUT", finish, blob, {}),
            ("PUT", f"{base}/v2/{REPO}/manifests/v2", read_only.seeded.image.manifest,
             {"Content-Type": OCI_MANIFEST}),
        ]
        for method, url, data, headers in requests:
            async with http.request(method, url, data=data, headers=headers) as resp:
                error = await assert_refused(resp, 403, "DENIED", "ReadOnly")
                assert "ReadOnly" in error["message"], error
        async with http.get(f"{base}/v2/{REPO}/tags/list") as resp:
            assert (await resp.json())["tags"] == ["v1"]


async def test_read_only_refuses_deletes(read_only: ReadOnlyNode) -> None:
    base, seeded = read_only.url, read_only.seeded
    async with aiohttp.ClientSession(headers=read_only.authorization) as http:
        for url in (
            f"{base}/v2/{REPO}/manifests/{seeded.image.digest}",
            f"{base}/v2/{REPO}/manifests/v1",
            f"{base}/v2/{REPO}/manifests/{seeded.referrer.digest}",
            f"{base}/v2/{REPO}/blobs/{read_only.spare_blob}",
        ):
            async with http.delete(url) as resp:
                error = await assert_refused(resp, 405, "UNSUPPORTED", "ReadOnly")
                assert "ReadOnly" in error["message"], error
        async with http.head(f"{base}/v2/{REPO}/blobs/{read_only.spare_blob}") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/v2/{REPO}/manifests/v1",
                            headers={"Accept": OCI_MANIFEST}) as resp:
            assert resp.status == 200


async def test_read_only_still_serves_pulls(read_only: ReadOnlyNode) -> None:
    base, seeded = read_only.url, read_only.seeded
    async with aiohttp.ClientSession(headers=read_only.authorization) as http:
        async with http.get(f"{base}/v2/{REPO}/manifests/v1",
                            headers={"Accept": OCI_MANIFEST}) as resp:
            assert resp.status == 200
            assert await resp.read() == seeded.image.manifest
        for blob in seeded.image.blobs:
            async with http.get(f"{base}/v2/{REPO}/blobs/{digest_of(blob)}") as resp:
                assert resp.status == 200
                assert await resp.read() == blob
        async with http.get(f"{base}/v2/{REPO}/tags/list") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/v2/{REPO}/referrers/{seeded.image.digest}") as resp:
            assert resp.status == 200
            index = await resp.json(content_type=None)
            assert [d["digest"] for d in index["manifests"]] == [seeded.referrer.digest]
        async with http.get(f"{base}/v2/_catalog") as resp:
            assert resp.status == 200
            assert REPO in (await resp.json())["repositories"]


# -- anonymous pull -------------------------------------------------------------------------------


@dataclass
class PublicNode:
    server: AuthServer
    seeded: dict[str, Seeded]


PUBLIC_REPOS = ("public/x", "public/a/b", "private/x", "publicity/x")


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PublicNode]:
    root = tmp_path_factory.mktemp("anonymous-pull")
    config = write_config(
        root / "config.toml", '[auth]\nenabled = true\nanonymous_pull = ["public/*"]\n'
    )
    with auth_server(root / "data", ["--config", str(config)]) as server:
        admin = server.make_token("admin", [("**", ALL_ACTIONS)])
        server.make_token("reader", [("team/*", READER)])

        async def seed() -> dict[str, Seeded]:
            async with aiohttp.ClientSession(headers={"Authorization": admin.header}) as http:
                return {r: await seed_repository(http, server.url, r) for r in PUBLIC_REPOS}

        yield PublicNode(server, asyncio.run(seed()))


async def _pull(http: aiohttp.ClientSession, base: str, repo: str, seeded: Seeded) -> None:
    async with http.get(f"{base}/v2/{repo}/manifests/v1",
                        headers={"Accept": OCI_MANIFEST}) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.read() == seeded.image.manifest
    async with http.head(f"{base}/v2/{repo}/manifests/{seeded.image.digest}") as resp:
        assert resp.status == 200
    for blob in seeded.image.blobs:
        async with http.get(f"{base}/v2/{repo}/blobs/{digest_of(blob)}") as resp:
            assert resp.status == 200
            assert await resp.read() == blob
    async with http.get(f"{base}/v2/{repo}/tags/list") as resp:
        assert resp.status == 200
    async with http.get(f"{base}/v2/{repo}/referrers/{seeded.image.digest}") as resp:
        assert resp.status == 200


async def test_anonymous_pull_of_a_public_repository(public: PublicNode) -> None:
    async with aiohttp.ClientSession() as http:
        await _pull(http, public.server.url, "public/x", public.seeded["public/x"])


async def test_anonymous_push_and_delete_of_a_public_repository_are_challenged(
    public: PublicNode,
) -> None:
    base, host, seeded = public.server.url, public.server.host, public.seeded["public/x"]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v2/public/x/blobs/uploads/") as resp:
            await assert_unauthorized(resp, host, "repository:public/x:pull,push")
        async with http.put(f"{base}/v2/public/x/manifests/v2", data=seeded.image.manifest,
                            headers={"Content-Type": OCI_MANIFEST}) as resp:
            await assert_unauthorized(resp, host, "repository:public/x:pull,push")
        async with http.delete(f"{base}/v2/public/x/manifests/{seeded.image.digest}") as resp:
            await assert_unauthorized(resp, host, "repository:public/x:delete")
        async with http.delete(
            f"{base}/v2/public/x/blobs/{digest_of(seeded.image.blobs[0])}"
        ) as resp:
            await assert_unauthorized(resp, host, "repository:public/x:delete")


@pytest.mark.parametrize("repo", ["private/x", "public/a/b", "publicity/x"])
async def test_anonymous_pull_elsewhere_is_challenged(public: PublicNode, repo: str) -> None:
    base, host, seeded = public.server.url, public.server.host, public.seeded[repo]
    async with aiohttp.ClientSession() as http:
        for path in (f"/v2/{repo}/manifests/v1", f"/v2/{repo}/tags/list",
                     f"/v2/{repo}/blobs/{digest_of(seeded.image.blobs[0])}"):
            async with http.get(f"{base}{path}") as resp:
                await assert_unauthorized(resp, host, f"repository:{repo}:pull")
        async with http.get(f"{base}/v2/_catalog") as resp:
            await assert_unauthorized(resp, host, "registry:catalog:*")


async def test_anonymous_bearer_flow_for_a_public_repository(public: PublicNode) -> None:
    base, host = public.server.url, public.server.host
    async with aiohttp.ClientSession() as http:
        body = await fetch_token(
            http, base, None,
            ["repository:public/x:pull,push,delete", "repository:private/x:pull"],
            service=host,
        )
        assert access_of(body["access_token"]) == {
            ("repository", "public/x"): {"content/read", "metadata/read"}
        }
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {body['access_token']}"}
    ) as http:
        await _pull(http, base, "public/x", public.seeded["public/x"])
        async with http.post(f"{base}/v2/public/x/blobs/uploads/") as resp:
            await assert_unauthorized(resp, host, "repository:public/x:pull,push")
        async with http.get(f"{base}/v2/private/x/tags/list") as resp:
            await assert_unauthorized(resp, host, "repository:private/x:pull")


async def test_a_token_may_also_pull_public_repositories(public: PublicNode) -> None:
    base = public.server.url
    reader = public.server.tokens["reader"]
    async with aiohttp.ClientSession(headers={"Authorization": reader.header}) as http:
        await _pull(http, base, "public/x", public.seeded["public/x"])
        async with http.post(f"{base}/v2/public/x/blobs/uploads/") as resp:
            await assert_refused(resp, 403, "DENIED")
        async with http.get(f"{base}/v2/private/x/tags/list") as resp:
            await assert_refused(resp, 403, "DENIED")


# -- secrets --------------------------------------------------------------------------------------


def test_signing_key_is_private(tmp_path: Path) -> None:
    with auth_server(tmp_path / "data") as server:
        key = server.data_dir / "secrets" / "token-signing-key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
        assert b"PRIVATE KEY" in key.read_bytes()


async def test_the_log_never_holds_a_password(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", 'log_level = "debug"\n[auth]\nenabled = true\n')
    with auth_server(tmp_path / "data", ["--config", str(config)]) as server:
        token = server.make_token("logged", [("team/*", ALL_ACTIONS)])
        wrong = "wrong-" + token.password1[:20]
        base = server.url
        async with aiohttp.ClientSession() as http:
            for authorization in (token.header, basic(token.name, token.password2),
                                  basic(token.name, wrong)):
                async with http.get(f"{base}/v2/team/app/tags/list",
                                    headers={"Authorization": authorization}) as resp:
                    await resp.read()
                async with http.get(f"{base}/oauth2/token",
                                    params={"scope": "repository:team/app:pull"},
                                    headers={"Authorization": authorization}) as resp:
                    await resp.read()
            for password in (token.password1, wrong):
                async with http.post(f"{base}/oauth2/token", data={
                    "grant_type": "password", "username": token.name, "password": password,
                    "scope": "repository:team/app:pull",
                }) as resp:
                    body = await resp.json(content_type=None)
            async with http.post(f"{base}/oauth2/token", data={
                "grant_type": "password", "username": token.name, "password": token.password1,
            }) as resp:
                body = await resp.json()
            async with http.post(f"{base}/oauth2/token", data={
                "grant_type": "refresh_token", "refresh_token": body["refresh_token"],
            }) as resp:
                await resp.read()
            async with aiohttp.ClientSession(headers={"Authorization": token.header}) as pusher:
                await seed_repository(pusher, base, "team/app")
        server.process.stop()
        log = server.process.log()
        key = (server.data_dir / "secrets" / "token-signing-key.pem").read_text()
    assert "aiohttp.access" in log or "GET /v2/" in log, "debug logging did not log requests"
    secrets = {
        "password1": token.password1,
        "password2": token.password2,
        "wrong password": wrong,
        "Basic header": token.header.removeprefix("Basic "),
        "signing key": "".join(key.splitlines()[1:-1])[:40],
    }
    for what, secret in secrets.items():
        assert secret not in log, f"the server log holds the {what}"
    assert base64.b64encode(token.password1.encode()).decode() not in log
