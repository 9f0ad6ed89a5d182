"""manifest: GETs by tag (wrk) and HEADs by tag (ab -k), after checking both answer as a client
expects (req/s, p50 and p99 in ms)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from benchmarks import WorkloadError
from benchmarks.client import client_session, expect, push_small_images
from benchmarks.figures import Metric
from benchmarks.images import MANIFEST_ACCEPT, OCI_MANIFEST, digest_of, make_small_images
from benchmarks.params import Params
from benchmarks.servers import Server
from benchmarks.workloads import Target, Workload
from benchmarks.wrk import WRK_MAX_SECONDS, run_wrk

AB_BIN = "/usr/bin/ab"


def metrics(p: Params) -> list[Metric]:
    m, c = p.manifest_requests, p.wrk_connections
    return [
        Metric("get_rps", f"manifest GET x{m}, c{c} (req/s)", "req/s", True, ">= 2x", 2.0),
        Metric("get_p50", "manifest GET p50 (ms)", "ms", False),
        Metric("get_p99", "manifest GET p99 (ms)", "ms", False, "<= 1/2 (>= 2x)", 2.0),
        Metric("head_rps", f"manifest HEAD x{m}, c{c} (req/s)", "req/s", True, ">= 2x", 2.0),
        Metric("head_p50", "manifest HEAD p50 (ms)", "ms", False),
        Metric("head_p99", "manifest HEAD p99 (ms)", "ms", False, "<= 1/2 (>= 2x)", 2.0),
    ]


async def check_manifest_reads(server: Server, repo: str, tag: str) -> None:
    url = f"{server.url}/v2/{repo}/manifests/{tag}"
    length = -1
    async with client_session(2) as session:
        for method in ("GET", "HEAD"):
            async with session.request(method, url, headers={"Accept": MANIFEST_ACCEPT}) as r:
                await expect(server, f"{method} /manifests/<tag> (check)", r, 200)
                body = await r.read()
                ctype = r.headers.get("Content-Type", "")
                if ctype != OCI_MANIFEST:
                    server.record_error(f"{method} /manifests/<tag> Content-Type {ctype!r}", 200)
                if method == "GET":
                    got = r.headers.get("Docker-Content-Digest")
                    if got != digest_of(body):
                        server.record_error(
                            f"GET /manifests/<tag>: Docker-Content-Digest {got} "
                            "is not the body's digest",
                            200,
                        )
                    length = len(body)
                elif r.headers.get("Content-Length") != str(length):
                    server.record_error(
                        "HEAD /manifests/<tag>: Content-Length "
                        f"{r.headers.get('Content-Length')}, GET body {length}",
                        200,
                    )


def run_ab_head(
    server: Server, path: str, total: int, p: Params, work_dir: Path
) -> dict[str, float]:
    """HEAD with ApacheBench (wrk cannot: it waits for a body of the Content-Length)."""
    csv = work_dir / f"ab-{server.name}.csv"
    cmd = [
        AB_BIN,
        "-q",
        "-i",
        "-k",
        "-t",
        str(WRK_MAX_SECONDS),
        "-n",
        str(total),
        "-c",
        str(p.wrk_connections),
        "-s",
        "10",
        "-e",
        str(csv),
        "-H",
        f"Accept: {MANIFEST_ACCEPT}",
        server.url + path,
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=WRK_MAX_SECONDS + 30, check=False
        )
    except subprocess.TimeoutExpired:
        raise WorkloadError(f"{server.name}: ab HEAD did not finish") from None
    out = proc.stdout

    def field(label: str) -> float | None:
        line = next((ln for ln in out.splitlines() if ln.startswith(label)), None)
        return float(line.split(":", 1)[1].split()[0]) if line else None

    complete, taken = field("Complete requests"), field("Time taken for tests")
    if proc.returncode != 0 or not complete or not taken or not csv.exists():
        raise WorkloadError(
            f"{server.name}: ab HEAD failed ({proc.returncode}): {out[-500:]}{proc.stderr[-500:]}"
        )
    percentiles = {}
    for line in csv.read_text().splitlines()[1:]:
        pct, ms = line.split(",")
        percentiles[int(float(pct))] = float(ms)
    non2xx, failed = field("Non-2xx responses"), field("Failed requests")
    if non2xx:
        server.record_error("HEAD /manifests/<tag> (ab)", 0, f"{non2xx:.0f} non-2xx responses")
    if failed:
        server.record_error(
            "HEAD /manifests/<tag> (ab failed requests)",
            0,
            " ".join(
                ln.strip()
                for ln in out.splitlines()
                if ln.strip().startswith(("Failed", "(Connect"))
            ),
        )
    keepalive = field("Keep-Alive requests") or 0
    if keepalive < complete:
        server.record_error(
            "HEAD /manifests/<tag> (ab): keep-alive not kept",
            0,
            f"only {keepalive:.0f} of {complete:.0f} requests on kept connections",
        )
    if complete < total * 0.99:
        print(
            f"    {server.name}: ab HEAD: only {complete:.0f} of {total} requests within "
            f"{WRK_MAX_SECONDS}s",
            file=sys.stderr,
        )
    return {"rps": complete / taken, "p50": percentiles[50], "p99": percentiles[99]}


async def run(target: Target) -> dict[str, float]:
    server, p = target.server, target.p
    if target.small_tags:
        repo, tag = target.small_tags[0]
    else:  # small-push was not selected: push one image, untimed
        image = make_small_images(
            1, p.small_layer_size, lambda i: "bench/manifests", f"{target.run}-{server.name}"
        )[0]
        await push_small_images(server, [image], 1)
        repo, tag = image.repo, image.tag
    await check_manifest_reads(server, repo, tag)
    path = f"/v2/{repo}/manifests/{tag}"
    loop = asyncio.get_running_loop()
    get = await loop.run_in_executor(
        None,
        run_wrk,
        server,
        "GET /manifests/<tag>",
        "GET",
        [path],
        p.manifest_requests,
        p,
        target.run_dir,
    )
    head = await loop.run_in_executor(
        None, run_ab_head, server, path, p.manifest_requests, p, target.run_dir
    )
    return {
        "get_rps": get["rps"],
        "get_p50": get["p50"],
        "get_p99": get["p99"],
        "head_rps": head["rps"],
        "head_p50": head["p50"],
        "head_p99": head["p99"],
    }


WORKLOAD = Workload("manifest", metrics, run)
