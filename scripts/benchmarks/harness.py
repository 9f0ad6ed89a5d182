"""Which workloads run, and how: each against each server on fresh data directories, the
servers' order alternating from run to run so that machine drift hits both alike; every value
recorded for the medians. The sync part sets up its root and upstream once for all its runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks import WorkloadError, report
from benchmarks.commands import stop_measured
from benchmarks.figures import SERVER_NAMES, Metric, Results, fmt
from benchmarks.images import LargeBlob, make_large_blobs
from benchmarks.params import MiB, Params, SyncParams
from benchmarks.servers import DISTRIBUTION_BIN, Distribution, Ours, Root, Server, tree_cpu_seconds
from benchmarks.sync import SyncBench
from benchmarks.workloads import (
    WORKLOAD_TIMEOUT,
    Step,
    SyncWorkload,
    Target,
    Workload,
    manifest,
    pull,
    push_chunked,
    push_whole,
    small_push,
    sync_copy,
    sync_idle,
    tags,
)
from benchmarks.workloads.manifest import AB_BIN
from benchmarks.workloads.pull import CURL_BIN
from benchmarks.workloads.sync_copy import SKOPEO_BIN
from benchmarks.wrk import WRK_BIN

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        push_whole.WORKLOAD,
        push_chunked.WORKLOAD,
        pull.WORKLOAD,
        small_push.WORKLOAD,
        manifest.WORKLOAD,
        tags.WORKLOAD,
    )
}  # in the report's order
SYNC_PARTS: dict[str, SyncWorkload] = {
    w.name: w for w in (sync_copy.WORKLOAD, sync_idle.WORKLOAD)
}  # `--only sync` is both
RSS = Metric("rss", "peak RSS, VmHWM (MB)", "MB", False, "ours <= 100 MB", max_ours=100.0)


def metric_table(p: Params) -> list[Metric]:
    """Every registry workload's rows, then RSS (rows without values are left out)."""
    return [*(m for w in WORKLOADS.values() for m in w.metrics(p)), RSS]


def preflight(servers: list[str], core: bool = True, sync: bool = False) -> None:
    tools = (WRK_BIN, CURL_BIN, AB_BIN) if core else ()
    missing = [b for b in tools if not Path(b).exists()]
    if ("distribution" in servers or sync) and not Path(DISTRIBUTION_BIN).exists():
        missing.append(DISTRIBUTION_BIN)
    if sync and not Path(SKOPEO_BIN).exists():
        missing.append(SKOPEO_BIN)
    if missing:
        sys.exit(
            "missing: "
            + ", ".join(missing)
            + "\ninstall with: apt-get install -y docker-registry wrk curl apache2-utils skopeo"
        )


def disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def client_cpu_seconds() -> float:
    """CPU of this process and of the waited-for load tools (curl, wrk, ab)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


async def measure(workload: Workload, target: Target, res: Results) -> None:
    """Run one workload against one server, recording its figures or its failure."""
    server, run = target.server, target.run
    assert server.proc is not None
    t = time.monotonic()
    cpu_server, cpu_client = tree_cpu_seconds(server.proc.pid), client_cpu_seconds()
    try:
        values = await asyncio.wait_for(workload.run(target), WORKLOAD_TIMEOUT)
    except (WorkloadError, aiohttp.ClientError, KeyError, TimeoutError, OSError) as e:
        msg = f"run {run + 1} {server.name} {workload.name}: {type(e).__name__}: {e}"
        res.failures.append(msg)
        print("    FAILED " + msg, file=sys.stderr)
        if server.proc.poll() is not None:
            res.failures.append(f"{server.name} died:\n{server.log_tail()}")
            print(f"    {server.name} died", file=sys.stderr)
        return
    res.add(server.name, values)
    shown = ", ".join(f"{k}={fmt(v)}" for k, v in values.items())
    cpu_server = tree_cpu_seconds(server.proc.pid) - cpu_server
    cpu_client = client_cpu_seconds() - cpu_client
    print(
        f"  {workload.name:<12} {server.name:<12} {shown}  ({time.monotonic() - t:.1f}s; "
        f"cpu s: server {cpu_server:.1f}, client {cpu_client:.1f})",
        file=sys.stderr,
    )


async def registry_runs(
    selected: tuple[str, ...],
    names: list[str],
    p: Params,
    runs: int,
    work_dir: Path,
    res: Results,
) -> int:
    """`runs` runs of the selected workloads, each on fresh servers; the peak disk use."""
    blobs: list[LargeBlob] = []
    if {"push-whole", "push-chunked", "pull"} & set(selected):
        t = time.monotonic()
        blobs = make_large_blobs(p, work_dir / "src")
        print(
            f"generated {p.blob_count} x {p.blob_size // MiB} MiB of random data in "
            f"{time.monotonic() - t:.1f}s",
            file=sys.stderr,
        )
    peak_disk = 0
    for run in range(runs):
        order = names if run % 2 == 0 else names[::-1]
        run_dir = work_dir / f"run{run}"
        servers: list[Server] = []
        try:
            for name in order:
                cls = Distribution if name == "distribution" else Ours
                server = cls(name, run_dir / name)
                server.base_dir.mkdir(parents=True)
                servers.append(server)
                server.start()
            print(f"run {run + 1}/{runs}: order {' then '.join(order)}", file=sys.stderr)
            targets = [Target(server, run, run_dir, p, blobs) for server in servers]
            for name in selected:
                for target in targets:
                    await measure(WORKLOADS[name], target, res)
            peak_disk = max(peak_disk, disk_usage(work_dir))
            for server in servers:
                rss, nproc = server.peak_rss()
                res.add(server.name, {"rss": rss})
                res.rss_procs[server.name] = max(res.rss_procs.get(server.name, 0), nproc)
                server.stop()
                server.scan_log()
                for key, count in server.errors.items():
                    res.failures.append(
                        f"run {run + 1} {server.name}: {key} (x{count}) "
                        f"{server.error_samples.get(key, '')}".rstrip()
                    )
        finally:
            for server in servers:
                server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    return peak_disk


async def sync_runs(
    parts: tuple[str, ...], sp: SyncParams, runs: int, work_dir: Path, res: Results
) -> dict[str, str]:
    """The sync part: set up once, then `runs` interleaved runs; notes for the report."""
    root = Root("ours", work_dir / "root")
    upstream = Distribution("distribution", work_dir / "registry1")
    bench = SyncBench(sp, work_dir, root, upstream)
    servers: list[Server] = [root, upstream]
    try:
        for server in servers:
            server.base_dir.mkdir(parents=True)
        root.init()
        for server in servers:
            server.start()
        pushes = [push for part in parts for push in SYNC_PARTS[part].populate(bench)]
        t = time.monotonic()
        for push in pushes:  # one after another: each has the machine to itself
            await asyncio.wait_for(push(), WORKLOAD_TIMEOUT * 4)
        bench.notes["populated"] = f"{time.monotonic() - t:.1f}s"
        bench.notes["disk"] = f"{disk_usage(work_dir) / 1e9:.2f} GB"
        print(f"sync: upstreams populated in {bench.notes['populated']}", file=sys.stderr)
        for run in range(runs):
            print(f"sync run {run + 1}/{runs}", file=sys.stderr)
            for part in parts:
                steps = SYNC_PARTS[part].steps
                for side, step in steps if run % 2 == 0 else steps[::-1]:
                    await sync_step(bench, part, side, step, run, res)
            shutil.rmtree(work_dir / f"run{run}", ignore_errors=True)
        for server in servers:
            rss, _ = server.peak_rss()
            bench.notes[f"rss {server.name}"] = f"{rss:.0f}"
    finally:
        stop_measured()
        for server in servers:
            server.stop()
        # Only the root's log: docker-registry logs every 404 at level error, and a sync asks
        # it for the OCI referrers fallback tag of each manifest, which is usually absent.
        root.scan_log()
        for key, count in root.errors.items():
            res.failures.append(
                f"sync root: {key} (x{count}) {root.error_samples.get(key, '')}".rstrip()
            )
    return bench.notes


async def sync_step(
    bench: SyncBench, part: str, side: str, step: Step, run: int, res: Results
) -> None:
    t = time.monotonic()
    cpu_before = client_cpu_seconds()
    try:
        values = await asyncio.to_thread(step, bench, run)
    except (WorkloadError, KeyError, ValueError, TimeoutError, OSError) as e:
        msg = f"sync run {run + 1} {step.__name__}: {type(e).__name__}: {e}"
        res.failures.append(msg)
        print("    FAILED " + msg, file=sys.stderr)
        return
    res.add(side, values)
    shown = ", ".join(f"{k}={fmt(v)}" for k, v in values.items())
    print(
        f"  {part:<10} {step.__name__:<12} {shown}  ({time.monotonic() - t:.1f}s; "
        f"cpu s of the commands {client_cpu_seconds() - cpu_before:.1f})",
        file=sys.stderr,
    )


async def benchmark(args: argparse.Namespace, sp: SyncParams) -> int:
    """The whole benchmark as the flags ask; its report on stdout; 1 if anything failed."""
    p = Params.quick() if args.quick else Params()
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    chosen = tuple(WORKLOADS) if not args.only else tuple(args.only.split(","))
    unknown = [w for w in chosen if w not in (*WORKLOADS, "sync", *SYNC_PARTS)]
    if unknown:
        sys.exit(
            f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}, "
            f"sync ({', '.join(SYNC_PARTS)})"
        )
    selected = tuple(w for w in WORKLOADS if w in chosen)  # canonical order
    sync_parts = tuple(part for part in SYNC_PARTS if part in chosen or "sync" in chosen)
    names = list(SERVER_NAMES) if args.servers == "both" else [args.servers]
    preflight(names, core=bool(selected), sync=bool(sync_parts))

    args.work_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="bench-", dir=args.work_dir))
    res = Results()
    peak_disk = 0
    t_start = time.monotonic()
    load_start = os.getloadavg()[0]
    if load_start > 0.5:
        print(
            f"note: load average {load_start:.2f} at start: other work on this machine skews "
            "the figures",
            file=sys.stderr,
        )
    sync_notes: dict[str, str] = {}
    try:
        if selected:
            peak_disk = await registry_runs(selected, names, p, runs, work_dir, res)
        if sync_parts:
            sync_notes = await sync_runs(sync_parts, sp, runs, work_dir / "sync", res)
    finally:
        if args.keep:
            print(f"kept {work_dir}", file=sys.stderr)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                args.work_dir.rmdir()  # only if empty

    report.print_heading(runs, args.quick, time.monotonic() - t_start, load_start)
    if selected:
        report.print_core_results(
            p, metric_table(p), res, peak_disk, args.work_dir, args.keep, args.markdown
        )
    if sync_parts:
        report.print_sync_results(sync_parts, sp, res, sync_notes, args.markdown)
    if res.failures:
        report.print_failures(res)
        return 1
    return 0
