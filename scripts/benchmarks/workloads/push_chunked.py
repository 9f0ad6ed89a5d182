"""push-chunked: the large blobs in PATCHes with Content-Range, then a PUT (MB/s)."""

from __future__ import annotations

from urllib.parse import urljoin

import aiohttp

from benchmarks.client import expect, file_stream, with_query
from benchmarks.figures import Metric
from benchmarks.images import LargeBlob
from benchmarks.params import MiB, Params
from benchmarks.servers import Server
from benchmarks.workloads import Target, Workload
from benchmarks.workloads.push_whole import blobs_label, push_blobs


def metrics(p: Params) -> list[Metric]:
    label = f"push {blobs_label(p)}, {p.chunk_size // MiB} MiB chunks (MB/s)"
    return [Metric("push_chunked", label, "MB/s", True, ">= 2x", 2.0)]


async def run(target: Target) -> dict[str, float]:
    chunk_size = target.p.chunk_size

    async def upload_chunked(
        session: aiohttp.ClientSession,
        server: Server,
        location: str,
        blob: LargeBlob,
        salt: bytes,
        digest: str,
        size: int,
    ) -> None:
        n = max(1, blob.size // chunk_size)
        for k in range(n):
            offset = k * chunk_size
            last = k == n - 1
            length = (blob.size - offset) if last else chunk_size
            tail = salt if last else b""
            end = offset + length + len(tail) - 1
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{end}",
                "Content-Length": str(length + len(tail)),
            }
            url = urljoin(server.url + "/", location)
            body = file_stream(blob.path, offset, length, tail)
            async with session.patch(url, data=body, headers=headers) as r:
                await expect(server, "PATCH upload (Content-Range)", r, 202)
                await r.read()
                location = r.headers["Location"]
        url = with_query(server.url, location, digest=digest)
        async with session.put(url, headers={"Content-Length": "0"}) as r:
            await expect(server, "PUT upload (finish chunked)", r, 201)
            await r.read()

    return await push_blobs(target, "chunked", upload_chunked)


WORKLOAD = Workload("push-chunked", metrics, run)
