"""end-11: cross-repository blob mount."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import aiohttp
from support.oci import digest_of, push_blob
from support.registry import MISSING_DIGEST, absolute, get_blob, with_query

if TYPE_CHECKING:
    from support.server import RegistryProcess

DATA = os.urandom(4000)


async def test_mount_from_another_repository_links_the_blob(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    source = f"{repo}-source"
    digest = await push_blob(http, registry.url, source, DATA)
    url = f"{registry.url}/v2/{repo}/blobs/uploads/?mount={digest}&from={source}"
    async with http.post(url) as resp:
        await resp.read()
        assert resp.status == 201
        assert resp.headers["Docker-Content-Digest"] == digest
        location = absolute(registry.url, resp.headers["Location"])
    async with http.get(location) as pulled:
        assert pulled.status == 200
        assert await pulled.read() == DATA
    assert await get_blob(http, registry.url, repo, digest) == DATA
    assert await get_blob(http, registry.url, source, digest) == DATA


async def test_mount_of_an_unknown_blob_opens_an_upload_instead(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    source = f"{repo}-source"
    await push_blob(http, registry.url, source, b"the source exists")
    url = f"{registry.url}/v2/{repo}/blobs/uploads/?mount={MISSING_DIGEST}&from={source}"
    async with http.post(url) as resp:
        await resp.read()
        assert resp.status == 202
        location = absolute(registry.url, resp.headers["Location"])
    put = with_query(location, ("digest", digest_of(DATA)))
    async with http.put(put, data=DATA, headers={"Content-Type": "application/octet-stream"}) as r:
        assert r.status == 201
    assert await get_blob(http, registry.url, repo, digest_of(DATA)) == DATA


async def test_mount_from_a_repository_that_lacks_the_blob_does_not_expose_it(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    """The spec allows a 201 here (the blob exists elsewhere); this registry answers 202, a plain
    upload, and links nothing."""
    holder, empty = f"{repo}-holder", f"{repo}-empty"
    digest = await push_blob(http, registry.url, holder, DATA)
    await push_blob(http, registry.url, empty, b"the from repository exists")
    url = f"{registry.url}/v2/{repo}/blobs/uploads/?mount={digest}&from={empty}"
    async with http.post(url) as resp:
        await resp.read()
        assert resp.status == 202
    await push_blob(http, registry.url, repo, b"the target repository exists")
    assert await get_blob(http, registry.url, repo, digest) is None


async def test_mount_without_from_links_a_blob_that_exists_elsewhere(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    digest = await push_blob(http, registry.url, f"{repo}-elsewhere", DATA)
    async with http.post(f"{registry.url}/v2/{repo}/blobs/uploads/?mount={digest}") as resp:
        await resp.read()
        assert resp.status == 201
        assert resp.headers["Docker-Content-Digest"] == digest
        assert resp.headers["Location"]
    assert await get_blob(http, registry.url, repo, digest) == DATA


async def test_mount_from_an_unknown_repository_opens_an_upload(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    url = f"{registry.url}/v2/{repo}/blobs/uploads/?mount={MISSING_DIGEST}&from={repo}-nowhere"
    async with http.post(url) as resp:
        await resp.read()
        assert resp.status == 202
        assert resp.headers["Location"]
