"""Body-less upload requests: each ends at once and the server goes on serving.

aiohttp hands every body-less request one shared empty payload; a body reader that does not end
at EOF spun on it without yielding, so the second such request froze the whole server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import aiohttp
from support.oci import digest_of, make_image, push_image
from support.registry import absolute, start_upload, with_query

if TYPE_CHECKING:
    from support.server import RegistryProcess

EMPTY = digest_of(b"")
# Generous: a frozen server never answers, a working one answers in milliseconds.
PATIENCE = aiohttp.ClientTimeout(total=20)


async def empty_patch(http: aiohttp.ClientSession, base: str, repo: str) -> int:
    location = absolute(base, await start_upload(http, base, repo))
    async with http.patch(location, data=b"", headers={"Content-Length": "0"}) as resp:
        await resp.read()
        return resp.status


async def empty_monolithic_post(http: aiohttp.ClientSession, base: str, repo: str) -> int:
    url = with_query(f"{base}/v2/{repo}/blobs/uploads/", ("digest", EMPTY))
    async with http.post(url, data=b"", headers={"Content-Length": "0"}) as resp:
        await resp.read()
        return resp.status


async def assert_serving(http: aiohttp.ClientSession, base: str) -> None:
    async with http.get(f"{base}/v2/") as resp:
        assert resp.status == 200


async def test_empty_patches_and_empty_monolithic_posts_leave_the_server_serving(
    start_registry, repo: str
) -> None:
    server: RegistryProcess = start_registry()
    async with aiohttp.ClientSession(timeout=PATIENCE) as http:
        assert [await empty_patch(http, server.url, repo) for _ in range(2)] == [202, 202]
        await assert_serving(http, server.url)

        assert [await empty_monolithic_post(http, server.url, repo) for _ in range(2)] == [201, 201]
        await assert_serving(http, server.url)
        async with http.get(f"{server.url}/v2/{repo}/blobs/{EMPTY}") as resp:
            assert resp.status == 200
            assert await resp.read() == b""

        many = [empty_patch(http, server.url, repo) for _ in range(25)]
        many += [empty_monolithic_post(http, server.url, repo) for _ in range(25)]
        statuses = await asyncio.gather(*many)
        assert statuses == [202] * 25 + [201] * 25

        image = make_image(seed=os.urandom(8).hex())
        await push_image(http, server.url, repo, image, "after")
        async with http.get(f"{server.url}/v2/{repo}/manifests/after") as resp:
            assert resp.status == 200
            assert await resp.read() == image.manifest
    server.stop()
    assert "Traceback" not in server.log()


# Run in a child on aiohttp's pure-Python parser (what runs wherever its C extension is absent):
# that parser gives a zero-byte response the shared empty payload too.
_DOWNLOAD_THRICE = """
import asyncio, sys
from appliance.oci.digests import Digest
from appliance.sync.client import RegistryClient
async def main() -> None:
    async with RegistryClient(sys.argv[1]) as client:
        for _ in range(3):
            pieces = [p async for p in client.blob_chunks(sys.argv[2], Digest.parse(sys.argv[3]))]
            assert pieces == [], pieces
    print("downloaded three times")

asyncio.run(main())
"""


async def test_the_sync_client_downloads_a_zero_byte_blob_again_and_again(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    assert await empty_monolithic_post(http, registry.url, repo) == 201
    child = subprocess.run(
        [sys.executable, "-c", _DOWNLOAD_THRICE, registry.url, repo, EMPTY],
        env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"},
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert child.stdout.strip() == "downloaded three times", child.stderr
