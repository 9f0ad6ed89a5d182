"""push-whole: large blobs, each a POST then one PUT streaming the whole body (MB/s)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import aiohttp

from benchmarks.client import client_session, expect, file_stream, start_upload, with_query
from benchmarks.figures import Metric
from benchmarks.images import LargeBlob, salt_for
from benchmarks.params import MB, MiB, Params
from benchmarks.servers import Server
from benchmarks.workloads import Target, Workload

# (session, server, upload location, blob, its salt, its digest and size) -> nothing
Upload = Callable[
    [aiohttp.ClientSession, Server, str, LargeBlob, bytes, str, int], Awaitable[None]
]


def blobs_label(p: Params) -> str:
    return f"{p.blob_count}x{p.blob_size // MiB} MiB"


def metrics(p: Params) -> list[Metric]:
    return [
        Metric("push_whole", f"push {blobs_label(p)}, whole (MB/s)", "MB/s", True, ">= 2x", 2.0)
    ]


async def push_blobs(target: Target, mode: str, upload: Upload) -> dict[str, float]:
    """Every large blob, salted anew, one after another into bench/large-MODE by `upload`."""
    server = target.server
    repo = f"bench/large-{mode}"
    total = 0
    pushed: list[tuple[str, int]] = []
    async with client_session(4) as session:
        start = time.perf_counter()
        for i, blob in enumerate(target.blobs):
            salt = salt_for(target.run, server.name, mode, i)
            digest, size = blob.salted(salt)
            location = await start_upload(session, server, repo)
            await upload(session, server, location, blob, salt, digest, size)
            total += size
            pushed.append((f"{repo}/blobs/{digest}", size))
        elapsed = time.perf_counter() - start
    if not target.large_blobs:
        target.large_blobs = pushed
    return {f"push_{mode}": total / MB / elapsed}


async def upload_whole(
    session: aiohttp.ClientSession,
    server: Server,
    location: str,
    blob: LargeBlob,
    salt: bytes,
    digest: str,
    size: int,
) -> None:
    url = with_query(server.url, location, digest=digest)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    body = file_stream(blob.path, 0, blob.size, salt)
    async with session.put(url, data=body, headers=headers) as r:
        await expect(server, "PUT upload (whole, streamed)", r, 201)
        await r.read()


async def run(target: Target) -> dict[str, float]:
    return await push_blobs(target, "whole", upload_whole)


WORKLOAD = Workload("push-whole", metrics, run)
