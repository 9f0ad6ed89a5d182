"""tags: GET /v2/<repo>/tags/list of a repository of many tags, by wrk (req/s, p99 in ms)."""

from __future__ import annotations

import asyncio

from benchmarks.client import client_session, expect, push_small_blob, put_manifest
from benchmarks.figures import Metric
from benchmarks.images import make_small_images
from benchmarks.params import Params
from benchmarks.workloads import Target, Workload
from benchmarks.wrk import run_wrk


def metrics(p: Params) -> list[Metric]:
    label = f"tags/list of {p.tag_count} tags x{p.tags_requests}, c{p.wrk_connections} (req/s)"
    return [
        Metric("tags_rps", label, "req/s", True, ">= 1.5x", 1.5),
        Metric("tags_p99", "tags/list p99 (ms)", "ms", False),
    ]


async def run(target: Target) -> dict[str, float]:
    server, p = target.server, target.p
    repo = "bench/tags"
    image = make_small_images(
        1, p.small_layer_size, lambda i: repo, f"{target.run}-{server.name}"
    )[0]
    async with client_session(32) as session:
        await push_small_blob(session, server, repo, image.config)
        await push_small_blob(session, server, repo, image.layer)
        sem = asyncio.Semaphore(32)

        async def tag(i: int) -> None:
            async with sem:
                await put_manifest(session, server, repo, f"t{i:05d}", image.manifest)

        await asyncio.gather(*(tag(i) for i in range(p.tag_count)))
        async with session.get(f"{server.url}/v2/{repo}/tags/list") as r:
            await expect(server, "GET /tags/list (check)", r, 200)
            listed = (await r.json(content_type=None)).get("tags") or []
            if len(listed) != p.tag_count:
                server.record_error(
                    f"GET /tags/list listed {len(listed)} of {p.tag_count} "
                    f"tags (Link: {r.headers.get('Link')})",
                    200,
                )
    loop = asyncio.get_running_loop()
    r = await loop.run_in_executor(
        None,
        run_wrk,
        server,
        "GET /tags/list",
        "GET",
        [f"/v2/{repo}/tags/list"],
        p.tags_requests,
        p,
        target.run_dir,
    )
    return {"tags_rps": r["rps"], "tags_p99": r["p99"]}


WORKLOAD = Workload("tags", metrics, run)
