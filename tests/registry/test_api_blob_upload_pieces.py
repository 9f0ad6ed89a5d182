"""How a body arrives does not change what is stored: the write path takes the body in the
pieces the HTTP parser made (thousands of tiny ones, or many MiB) and the blob is exactly the
bytes sent, under their digest."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import aiohttp
from support.oci import digest_of
from support.registry import absolute, get_blob, start_upload, stream, with_query

if TYPE_CHECKING:
    from support.server import RegistryProcess

MiB = 1024 * 1024


async def test_a_body_of_thousands_of_tiny_chunks_is_stored_whole(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    """More pieces than one writev takes (1024): each tiny chunk of chunked encoding is one."""
    data = os.urandom(3 * 2500)
    location = await start_upload(http, registry.url, repo)
    headers = {"Content-Type": "application/octet-stream"}
    async with http.patch(location, data=stream(data, piece=3), headers=headers) as resp:
        await resp.read()
        assert resp.status == 202
        assert resp.headers["Range"] == f"0-{len(data) - 1}"
        location = absolute(registry.url, resp.headers["Location"])
    async with http.put(with_query(location, ("digest", digest_of(data)))) as resp:
        assert resp.status == 201, await resp.text()
    assert await get_blob(http, registry.url, repo, digest_of(data)) == data


async def test_a_body_of_many_write_batches_is_stored_byte_for_byte(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    """Several MiB in odd-sized pieces: batches are written while the next ones arrive, in
    order, and the last partial batch is not lost."""
    data = os.urandom(13 * MiB + 12345)
    location = await start_upload(http, registry.url, repo)
    url = with_query(location, ("digest", digest_of(data)))
    headers = {"Content-Type": "application/octet-stream"}
    async with http.put(url, data=stream(data, piece=100_003), headers=headers) as resp:
        assert resp.status == 201, await resp.text()
    assert await get_blob(http, registry.url, repo, digest_of(data)) == data
