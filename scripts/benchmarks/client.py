"""The benchmark's OCI push client (aiohttp): upload sessions, blobs, tagged manifests. A
status it did not expect is recorded as the server's error and fails the workload."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

from benchmarks import WorkloadError
from benchmarks.images import OCI_MANIFEST, SmallImage, digest_of
from benchmarks.params import MiB
from benchmarks.servers import Server


def client_session(limit: int, headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=timeout,
        auto_decompress=False,
        headers=headers,
    )


async def file_stream(
    path: Path, offset: int, length: int, tail: bytes = b"", piece: int = MiB
) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        f.seek(offset)
        remaining = length
        while remaining > 0:
            data = f.read(min(piece, remaining))
            if not data:
                raise WorkloadError(f"{path} is shorter than expected")
            remaining -= len(data)
            yield data
    if tail:
        yield tail


def with_query(base: str, location: str, **params: str) -> str:
    url = urljoin(base + "/", location)
    for k, v in params.items():
        url += ("&" if "?" in url else "?") + f"{k}={v}"
    return url


async def expect(server: Server, what: str, resp: aiohttp.ClientResponse, *ok: int) -> None:
    if resp.status not in ok:
        body = (await resp.read()).decode(errors="replace")
        server.record_error(what, resp.status, body)
        raise WorkloadError(f"{server.name}: {what} returned {resp.status}: {body[:200]}")


async def start_upload(session: aiohttp.ClientSession, server: Server, repo: str) -> str:
    async with session.post(f"{server.url}/v2/{repo}/blobs/uploads/") as r:
        await expect(server, "POST /blobs/uploads/", r, 202)
        await r.read()
        return r.headers["Location"]


async def push_small_blob(
    session: aiohttp.ClientSession, server: Server, repo: str, data: bytes
) -> None:
    location = await start_upload(session, server, repo)
    url = with_query(server.url, location, digest=digest_of(data))
    async with session.put(
        url, data=data, headers={"Content-Type": "application/octet-stream"}
    ) as r:
        await expect(server, "PUT upload (small, with body)", r, 201)
        await r.read()


async def put_manifest(
    session: aiohttp.ClientSession, server: Server, repo: str, ref: str, manifest: bytes
) -> None:
    async with session.put(
        f"{server.url}/v2/{repo}/manifests/{ref}",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    ) as r:
        await expect(server, "PUT /manifests/<tag>", r, 201)
        await r.read()


async def push_small_images(
    server: Server, images: list[SmallImage], concurrency: int
) -> tuple[list[SmallImage], float]:
    """Push images with `concurrency` workers; return (the images pushed, seconds)."""
    queue: asyncio.Queue[SmallImage] = asyncio.Queue()
    for image in images:
        queue.put_nowait(image)
    done: list[SmallImage] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:  # bounded: ends when the finite queue is empty
            try:
                image = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                await push_small_blob(session, server, image.repo, image.config)
                await push_small_blob(session, server, image.repo, image.layer)
                await put_manifest(session, server, image.repo, image.tag, image.manifest)
            except WorkloadError:
                continue  # recorded in server.errors; the image does not count
            except aiohttp.ClientError as e:
                server.record_error(f"small push: {type(e).__name__}", 0, str(e))
                continue
            done.append(image)

    async with client_session(concurrency) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return done, elapsed
