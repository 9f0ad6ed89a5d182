"""sync-copy: a large image of random layers, our root -> a freshly activated device
(`connected-registry sync`), against `skopeo copy --all` between two docker-registry instances
(a fresh #2 each run) (MB/s; the command's wall time, CPU and peak RSS)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

from benchmarks import WorkloadError
from benchmarks.client import (
    client_session,
    expect,
    file_stream,
    push_small_blob,
    put_manifest,
    start_upload,
    with_query,
)
from benchmarks.commands import Measured, run_measured
from benchmarks.figures import Metric, Results, fmt
from benchmarks.images import MANIFEST_ACCEPT, BlobFile, LargeImage, digest_of, make_large_image
from benchmarks.params import MB, MiB, SyncParams
from benchmarks.servers import Distribution, Server
from benchmarks.sync import SYNC_TIMEOUT, SyncBench, measured_sync, sync_report
from benchmarks.workloads import SyncWorkload

SKOPEO_BIN = "/usr/bin/skopeo"
LARGE_REPO, LARGE_TAG = "bench/large", "v1"


async def push_large_image(
    server: Server, image: LargeImage, headers: dict[str, str] | None = None
) -> None:
    """The image's layers (streamed from disk, one PUT each), config and tagged manifest."""
    async with client_session(len(image.layers), headers) as session:

        async def layer(blob: BlobFile) -> None:
            location = await start_upload(session, server, LARGE_REPO)
            url = with_query(server.url, location, digest=blob.digest)
            sent = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
            body = file_stream(blob.path, 0, blob.size)
            async with session.put(url, data=body, headers=sent) as r:
                await expect(server, "PUT upload (sync image layer)", r, 201)
                await r.read()

        await asyncio.gather(*(layer(blob) for blob in image.layers))
        await push_small_blob(session, server, LARGE_REPO, image.config)
        await put_manifest(session, server, LARGE_REPO, LARGE_TAG, image.manifest)


def populate(bench: SyncBench) -> list[Callable[[], Awaitable[None]]]:
    """The large image, generated now, for both upstreams."""
    t = time.monotonic()
    image = bench.image = make_large_image(bench.sp, bench.work_dir / "image")
    bench.notes["generated"] = f"{time.monotonic() - t:.1f}s"
    return [
        lambda: push_large_image(bench.upstream, image),
        lambda: push_large_image(bench.root, image, bench.root.auth()),
    ]


def skopeo_copy(bench: SyncBench, run: int) -> dict[str, float]:
    """`skopeo copy --all` from docker-registry #1 into a fresh docker-registry #2."""
    assert bench.image is not None
    target = Distribution("distribution", bench.run_dir(run) / "registry2")
    target.base_dir.mkdir(parents=True)
    target.start()
    try:
        ref = f"{LARGE_REPO}:{LARGE_TAG}"
        result = run_measured(
            [
                SKOPEO_BIN, "--insecure-policy", "copy", "--all",
                "--src-tls-verify=false", "--dest-tls-verify=false",
                f"docker://127.0.0.1:{bench.upstream.port}/{ref}",
                f"docker://127.0.0.1:{target.port}/{ref}",
            ],
            SYNC_TIMEOUT,
        )  # fmt: skip
        if result.returncode != 0:
            raise WorkloadError(f"skopeo copy exited {result.returncode}: {result.stderr[-300:]}")
        check_copied(target, bench.image)
    finally:
        target.peak_rss()  # ends its sampler thread
        target.stop()
        shutil.rmtree(target.base_dir, ignore_errors=True)
    return copy_figures(bench.image, result)


def device_copy(bench: SyncBench, run: int) -> dict[str, float]:
    """A fresh device's first `connected-registry sync` of the image from the root."""
    assert bench.image is not None
    device = bench.run_dir(run) / "copy-device"
    bench.root.activate(f"copy{run}", [LARGE_REPO], device)
    try:
        result = measured_sync("--data-dir", str(device))
        report = sync_report(
            result, "device sync of the large image", "full", 1, bench.image.blob_bytes
        )
    finally:
        shutil.rmtree(device, ignore_errors=True)
    figures = copy_figures(bench.image, result)
    figures["sync_inrun_mbps"] = bench.image.blob_bytes / MB / max(report["seconds"], 1e-6)
    return figures


def copy_figures(image: LargeImage, result: Measured) -> dict[str, float]:
    return {
        "sync_mbps": image.blob_bytes / MB / result.wall,
        "sync_wall": result.wall,
        "sync_cpu": result.cpu,
        "sync_rss": result.rss_mb,
    }


def check_copied(target: Server, image: LargeImage) -> None:
    """Untimed: the destination serves the manifest by its tag, and every layer in full."""
    base = f"{target.url}/v2/{LARGE_REPO}"
    checks = [(f"{base}/manifests/{LARGE_TAG}", digest_of(image.manifest), None)]
    checks += [(f"{base}/blobs/{layer.digest}", layer.digest, layer.size) for layer in image.layers]
    for url, digest, size in checks:
        request = urllib.request.Request(url, method="HEAD", headers={"Accept": MANIFEST_ACCEPT})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                got, length = (
                    r.headers.get("Docker-Content-Digest"),
                    r.headers.get("Content-Length"),
                )
        except (urllib.error.URLError, OSError) as e:
            raise WorkloadError(f"after skopeo copy: HEAD {url}: {e}") from None
        if got != digest or (size is not None and length != str(size)):
            raise WorkloadError(f"after skopeo copy: {url} is {got}, {length} bytes")


def metrics(sp: SyncParams) -> list[Metric]:
    size = f"{sp.size / (1024 * MiB):g} GiB" if sp.size >= 1024 * MiB else f"{sp.size // MiB} MiB"
    return [
        Metric(
            "sync_mbps",
            f"sync a {size} image ({sp.layers} layers) to a fresh child (MB/s)",
            "MB/s",
            True,
            ">= 2x",
            2.0,
        ),
        Metric("sync_wall", "  wall time of the command (s)", "s", False),
        Metric("sync_cpu", "  CPU of the copying process (s)", "s", False),
        Metric("sync_rss", "  peak RSS of the copying process (MB)", "MB", False),
    ]


HEADER = ["workload", "skopeo copy", "ours: device sync", "ratio", "target", "met?"]


def notes(sp: SyncParams, res: Results) -> list[str]:
    inrun = res.median("ours", "sync_inrun_mbps")
    return [
        f"skopeo {skopeo_version()}: `skopeo copy --all` from docker-registry #1 into a fresh "
        "docker-registry #2 (no auth, plain HTTP); ours: `connected-registry sync` of a "
        "freshly activated ReadOnly device from our root (auth on: Bearer sync token, "
        "plain HTTP), blobs fsynced on the device; both on loopback",
        "MB/s = the image's blob bytes / the command's wall time (process start-up "
        f"included); ours over the sync report's own time: {fmt(inrun)} MB/s",
        f"the image: {sp.layers} random layers of {sp.size // sp.layers // MiB} MiB, each a "
        "stored (incompressible) gzip stream, so skopeo copies them as they are",
        "CPU and peak RSS: the copying process alone (wait4), not the registries",
    ]


def skopeo_version() -> str:
    try:
        out = subprocess.run(
            [SKOPEO_BIN, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
        return out[-1] if out else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


WORKLOAD = SyncWorkload(
    "sync-copy", populate, (("distribution", skopeo_copy), ("ours", device_copy))
)
