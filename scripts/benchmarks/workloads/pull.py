"""pull: the large blobs by curl, 1 client, then several at once, each fetching all (MB/s)."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time

from benchmarks import WorkloadError
from benchmarks.client import client_session, expect
from benchmarks.figures import Metric
from benchmarks.params import MB, MiB, Params
from benchmarks.servers import Server
from benchmarks.workloads import WORKLOAD_TIMEOUT, Target, Workload
from benchmarks.workloads.push_whole import push_blobs, upload_whole

CURL_BIN = "/usr/bin/curl"


def metrics(p: Params) -> list[Metric]:
    return [
        Metric("pull_1", "pull, 1 client (MB/s)", "MB/s", True, ">= 1x", 1.0),
        Metric("pull_n", f"pull, {p.pull_clients} clients (MB/s)", "MB/s", True, ">= 1x", 1.0),
    ]


def curl_pull(urls: list[tuple[str, int]], deadline: float) -> subprocess.Popen[bytes]:
    cmd = [
        CURL_BIN,
        "-sS",
        "--max-time",
        str(int(deadline)),
        "-w",
        "%{http_code} %{size_download} <%header{docker-content-digest}>\\n",
    ]
    for url, _ in urls:
        cmd += ["-o", "/dev/null", url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def check_curl(server: Server, proc: subprocess.Popen[bytes], urls: list[tuple[str, int]]) -> int:
    try:
        out, err = proc.communicate(timeout=WORKLOAD_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise WorkloadError(f"{server.name}: curl pull timed out") from None
    results = [line.split(" ", 2) for line in out.decode().splitlines()]
    total = 0
    for (url, size), (code, got, digest) in zip(urls, results, strict=False):
        if code != "200" or int(got) != size:
            server.record_error(f"GET /blobs/<digest> (size {got} of {size})", int(code))
            raise WorkloadError(f"{server.name}: GET {url} -> {code}, {got} of {size} bytes")
        if digest.strip("<>") != url.rsplit("/", 1)[1]:
            server.record_error(f"GET /blobs/<digest>: Docker-Content-Digest {digest}", 200)
        total += int(got)
    if proc.returncode != 0 or len(results) != len(urls):
        raise WorkloadError(f"{server.name}: curl failed ({proc.returncode}): {err.decode()}")
    return total


async def verify_blob_content(server: Server, url_size: tuple[str, int]) -> None:
    url, size = url_size
    h, n = hashlib.sha256(), 0
    async with client_session(1) as session, session.get(url) as r:
        await expect(server, "GET /blobs/<digest> (verify)", r, 200)
        async for chunk in r.content.iter_chunked(MiB):
            h.update(chunk)
            n += len(chunk)
    if n != size or "sha256:" + h.hexdigest() != url.rsplit("/", 1)[1]:
        server.record_error(
            f"GET /blobs/<digest>: content is not the blob pushed ({n} bytes, "
            f"sha256:{h.hexdigest()[:12]}...)",
            200,
        )


async def run(target: Target) -> dict[str, float]:
    server = target.server
    if not target.large_blobs:  # push-whole was not selected: push them untimed
        await push_blobs(target, "whole", upload_whole)
    urls = [(f"{server.url}/v2/{path}", size) for path, size in target.large_blobs]
    result = {}
    loop = asyncio.get_running_loop()

    start = time.perf_counter()
    proc = curl_pull(urls, WORKLOAD_TIMEOUT)
    total = await loop.run_in_executor(None, check_curl, server, proc, urls)
    result["pull_1"] = total / MB / (time.perf_counter() - start)

    start = time.perf_counter()
    # each client pulls every blob, starting at a different one
    clients = target.p.pull_clients
    plans = [urls[i % len(urls) :] + urls[: i % len(urls)] for i in range(clients)]
    procs = [curl_pull(plan, WORKLOAD_TIMEOUT) for plan in plans]
    totals = await asyncio.gather(
        *(
            loop.run_in_executor(None, check_curl, server, proc, plan)
            for proc, plan in zip(procs, plans, strict=True)
        )
    )
    result["pull_n"] = sum(totals) / MB / (time.perf_counter() - start)
    await verify_blob_content(server, urls[0])  # untimed: the bytes are the ones pushed
    return result


WORKLOAD = Workload("pull", metrics, run)
