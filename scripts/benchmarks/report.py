"""The report on stdout: a table per part (plain, or Markdown with --markdown), the notes that
say how each figure was taken, and every run's values."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.figures import SERVER_NAMES, Metric, Results, fmt
from benchmarks.images import MANIFEST_ACCEPT
from benchmarks.params import Params, SyncParams
from benchmarks.servers import distribution_version
from benchmarks.workloads import sync_copy, sync_idle

TABLE_HEADER = ["workload", "distribution", "ours", "ratio", "target", "met?"]


def build_rows(metrics: list[Metric], res: Results) -> list[list[str]]:
    rows = []
    for m in metrics:
        theirs = res.median("distribution", m.key)
        ours = res.median("ours", m.key)
        if theirs is None and ours is None:
            continue
        ratio = m.ratio(theirs, ours)
        met = ""
        if m.max_ours is not None:
            met = "—" if ours is None else ("yes" if ours <= m.max_ours else "NO")
        elif m.min_ratio is not None:
            met = "—" if ratio is None else ("yes" if ratio >= m.min_ratio else "NO")
        rows.append(
            [
                m.label,
                fmt(theirs),
                fmt(ours),
                "—" if ratio is None else f"{ratio:.2f}x",
                m.target or "",
                met,
            ]
        )
    return rows


def print_table(
    rows: list[list[str]], markdown: bool, header: list[str] = TABLE_HEADER, numeric: int = 3
) -> None:
    """`header` over `rows`; columns 1..`numeric` are figures (right-aligned), the rest text."""
    if markdown:
        print("| " + " | ".join(header) + " |")
        print(
            "|"
            + "|".join(["---"] + ["---:"] * numeric + ["---"] * (len(header) - 1 - numeric))
            + "|"
        )
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for n, row in enumerate([header, *rows]):
        cells = [
            c.rjust(w) if 1 <= i <= numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print(" | ".join(cells).rstrip())
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def print_heading(runs: int, quick: bool, elapsed: float, load_start: float) -> None:
    print()
    print(
        f"connected-registry vs distribution {distribution_version()}: median of {runs} "
        f"run(s){' (--quick)' if quick else ''}, {os.cpu_count()} CPUs, "
        f"{elapsed:.0f}s in all, load average {load_start:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end"
    )
    print(
        "ratio: throughput = ours / distribution; latency and RSS = distribution / ours "
        "(> 1 means ours is better). MB = 10^6 bytes."
    )


def print_core_results(
    p: Params,
    metrics: list[Metric],
    res: Results,
    peak_disk: int,
    work_dir: Path,
    keep: bool,
    markdown: bool,
) -> None:
    print()
    print_table(build_rows(metrics, res), markdown)
    print()
    notes = [
        f"large pushes and pulls: blobs go one after another for push; pull = curl, "
        f"1 client fetching all {p.blob_count} blobs, then {p.pull_clients} curl clients at "
        "once each fetching all of them",
        "small images: POST + PUT per blob (config, layer), then PUT manifest by tag; "
        f"aiohttp client, pool of {p.small_concurrency}",
        f"manifest GET and tags/list: wrk -t{p.wrk_threads} -c{p.wrk_connections}, each thread "
        "stopping itself after its share of the request count; manifest HEAD: ab -k -i "
        f"-c{p.wrk_connections} (wrk hangs on HEAD: it waits for a Content-Length body; ab is "
        "HTTP/1.0 keep-alive); one tag; "
        f"Accept: {MANIFEST_ACCEPT}",
        "RSS: sum of VmHWM over the server process and every child seen "
        f"(processes: distribution {res.rss_procs.get('distribution', '—')}, "
        f"ours {res.rss_procs.get('ours', '—')}); median of the runs, each on a fresh server",
        "distribution: log level error, access log off, inmemory blob descriptor cache, "
        "filesystem storage, delete enabled",
        f"peak disk use under {work_dir}: {peak_disk / 1e9:.2f} GB (removed afterwards"
        f"{'' if not keep else ' unless --keep'})",
    ]
    for note in notes:
        print(("- " if markdown else "  ") + note)
    print_per_run([m.key for m in metrics], res)


def print_sync_results(
    parts: tuple[str, ...], sp: SyncParams, res: Results, notes: dict[str, str], markdown: bool
) -> None:
    bullet = "- " if markdown else "  "
    if "sync-copy" in parts:
        print()
        print_table(build_rows(sync_copy.metrics(sp), res), markdown, sync_copy.HEADER)
        print()
        for note in sync_copy.notes(sp, res):
            print(bullet + note)
    if "sync-idle" in parts:
        print()
        print_table(sync_idle.rows(sp, res), markdown, sync_idle.HEADER, numeric=4)
        print()
        for note in sync_idle.notes(sp):
            print(bullet + note)
    print(
        bullet + f"setup: image generated in {notes.get('generated', '—')}, both upstreams "
        f"populated in {notes.get('populated', '—')}; peak RSS over the sync part: root "
        f"{notes.get('rss ours', '—')} MB, docker-registry #1 "
        f"{notes.get('rss distribution', '—')} MB; disk for both upstreams "
        f"{notes.get('disk', '—')} (removed afterwards)"
    )
    sync_keys = [k for s in SERVER_NAMES for k in res.values[s]]
    print_per_run(
        [k for k in dict.fromkeys(sync_keys) if k.startswith(("sync_", "feed_", "plain_"))], res
    )


def print_per_run(keys: list[str], res: Results) -> None:
    print()
    print("per-run values (distribution | ours):")
    for key in keys:
        if not any(key in res.values[s] for s in SERVER_NAMES):
            continue
        d = " ".join(fmt(v) for v in res.values["distribution"].get(key, []))
        o = " ".join(fmt(v) for v in res.values["ours"].get(key, []))
        print(f"  {key:<13} {d or '—'} | {o or '—'}")


def print_failures(res: Results) -> None:
    print()
    print("errors (status codes returned; 0 = connection-level):")
    for failure in res.failures:
        print("  " + failure)
