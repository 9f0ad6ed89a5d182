"""sync-idle: many repositories of many tags, a first sync and then one with nothing changed,
from our root (the change feed; then a resync) and from docker-registry as a plain
[[upstream]] (requests, seconds)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from benchmarks.client import client_session, push_small_blob, put_manifest
from benchmarks.commands import Measured, appliance_cli
from benchmarks.figures import Results, fmt
from benchmarks.images import SmallImage, make_small_images
from benchmarks.params import SyncParams
from benchmarks.servers import Server
from benchmarks.sync import SyncBench, measured_sync, sync_report
from benchmarks.workloads import SyncWorkload

FLEET = "fleet"  # the no-change sync's repositories: fleet/r000…


def fleet_repositories(sp: SyncParams) -> list[str]:
    return [f"{FLEET}/r{i:03d}" for i in range(sp.repos)]


def make_fleet(sp: SyncParams) -> dict[str, list[SmallImage]]:
    """Per repository its own few small images (random layers: no two repositories share
    content); its tags are spread over them."""
    nonce = str(time.time_ns())
    return {
        repo: make_small_images(sp.images, 1024, lambda i, r=repo: r, f"{repo}-{nonce}")
        for repo in fleet_repositories(sp)
    }


async def push_fleet(
    server: Server,
    fleet: dict[str, list[SmallImage]],
    sp: SyncParams,
    headers: dict[str, str] | None = None,
) -> None:
    """Every repository's images, then its tags t00… by PUT of the manifest (repositories in
    parallel, each one's requests in order)."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for repo in fleet:
        queue.put_nowait(repo)

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:  # bounded: ends when the finite queue is empty
            try:
                repo = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            images = fleet[repo]
            for image in images:
                await push_small_blob(session, server, repo, image.config)
                await push_small_blob(session, server, repo, image.layer)
            for t in range(sp.tags):
                manifest = images[t % len(images)].manifest
                await put_manifest(session, server, repo, f"t{t:02d}", manifest)

    async with client_session(sp.concurrency, headers) as session:
        await asyncio.gather(*(worker(session) for _ in range(sp.concurrency)))


def populate(bench: SyncBench) -> list[Callable[[], Awaitable[None]]]:
    """The fleet, the same content for both upstreams."""
    fleet = make_fleet(bench.sp)
    return [
        lambda: push_fleet(bench.upstream, fleet, bench.sp),
        lambda: push_fleet(bench.root, fleet, bench.sp, bench.root.auth()),
    ]


def sync_figures(prefix: str, result: Measured, report: dict[str, Any]) -> dict[str, float]:
    return {
        f"{prefix}_req": report["requests"],
        f"{prefix}_run": report["seconds"],
        f"{prefix}_wall": result.wall,
        f"{prefix}_rss": result.rss_mb,
    }


def from_root(bench: SyncBench, run: int) -> dict[str, float]:
    """A device of the root: first sync, no-change sync (the feed), then a resync."""
    device = bench.run_dir(run) / "feed-device"
    name = f"fleet{run}"
    bench.root.activate(name, [f"{FLEET}/*"], device)
    try:
        args = ("--data-dir", str(device))
        first = measured_sync(*args)
        full = sync_report(first, "first sync from the root", "full", bench.sp.tag_total)
        idle = measured_sync(*args)
        unchanged = sync_report(idle, "no-change sync from the root", "idle", 0)
        appliance_cli("cloud", "resync", name, "--data-dir", str(bench.root.data_dir))
        again = measured_sync(*args)
        resynced = sync_report(again, "resync from the root", "full", 0)
    finally:
        shutil.rmtree(device, ignore_errors=True)
    return {
        **sync_figures("feed_first", first, full),
        **sync_figures("feed_idle", idle, unchanged),
        **sync_figures("feed_resync", again, resynced),
    }


def from_plain(bench: SyncBench, run: int) -> dict[str, float]:
    """A development node with docker-registry as `[[upstream]]`: first and no-change."""
    folder = bench.run_dir(run)
    node = folder / "plain-node"
    config = folder / "plain.toml"
    config.write_text(
        f'data_dir = "{node}"\n'
        "[[upstream]]\n"
        f'url = "{bench.upstream.url}"\n'
        f"repositories = {json.dumps(fleet_repositories(bench.sp))}\n"
    )
    try:
        first = measured_sync("--config", str(config))
        full = sync_report(first, "first sync from docker-registry", None, bench.sp.tag_total)
        idle = measured_sync("--config", str(config))
        unchanged = sync_report(idle, "no-change sync from docker-registry", None, 0)
    finally:
        shutil.rmtree(node, ignore_errors=True)
    return {
        **sync_figures("plain_first", first, full),
        **sync_figures("plain_idle", idle, unchanged),
    }


HEADER = [
    "sync (our device or node)",
    "requests",
    "run (s)",
    "wall (s)",
    "peak RSS (MB)",
    "target",
    "met?",
]


def rows(sp: SyncParams, res: Results) -> list[list[str]]:
    shape = f"{sp.repos} x {sp.tags}"
    plan = [
        (f"first sync of {shape}, from our root", "feed_first", "", None),
        ("no-change sync, from our root (change feed)", "feed_idle", "a handful (<= 5)", 5),
        ("no-change resync, from our root (full reconcile)", "feed_resync", "", None),
        (f"first sync of {shape}, from docker-registry", "plain_first", "", None),
        (
            "no-change sync, from docker-registry",
            "plain_idle",
            f"<= {sp.repos} tags lists + {sp.tag_total} HEADs",
            sp.plain_bound,
        ),
    ]
    table = []
    for label, prefix, target, bound in plan:
        requests = res.median("ours", f"{prefix}_req")
        if requests is None:
            continue
        met = "" if bound is None else ("yes" if requests <= bound else "NO")
        table.append(
            [
                label,
                f"{requests:,.0f}" if float(requests).is_integer() else f"{requests:,.1f}",
                fmt(res.median("ours", f"{prefix}_run")),
                fmt(res.median("ours", f"{prefix}_wall")),
                fmt(res.median("ours", f"{prefix}_rss")),
                target,
                met,
            ]
        )
    return table


def notes(sp: SyncParams) -> list[str]:
    return [
        f"{sp.repos} repositories x {sp.tags} tags over {sp.images} small images "
        "each, the same content in our root and in docker-registry (no auth)",
        "from our root: a ReadOnly device scoped to `fleet/*`; requests and run time are "
        "the sync report's (`--output json`), wall time is the command's, start-up "
        "included; resync = `cloud resync` on the root, then a sync",
        "from docker-registry: a development node with `[[upstream]]` naming the "
        f"{sp.repos} repositories; the bound is one tags list per repository and one HEAD "
        "per tag",
    ]


WORKLOAD = SyncWorkload("sync-idle", populate, (("ours", from_plain), ("ours", from_root)))
