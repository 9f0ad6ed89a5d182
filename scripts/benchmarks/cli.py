"""The flags of `scripts/bench`, and its run: SIGTERM unwinds like Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks import CHECKOUT
from benchmarks.figures import SERVER_NAMES
from benchmarks.harness import SYNC_PARTS, WORKLOADS, benchmark
from benchmarks.params import MiB, SyncParams


def sync_params(args: argparse.Namespace) -> SyncParams:
    sp = SyncParams.quick() if args.quick else SyncParams()
    overrides = {"size": args.sync_size, "repos": args.sync_repos, "tags": args.sync_tags}
    return replace(sp, **{k: v for k, v in overrides.items() if v is not None})


def parse_size(text: str) -> int:
    """`256M`, `1G`, `1GiB`, `64MiB` or bytes; K/M/G are powers of 1024."""
    units = {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB}
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = number[-1:] if number[-1:] in "KMG" else ""
    try:
        return int(float(number.removesuffix(unit)) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 256M or 1G") from None


def parse_args(argv: list[str], description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--runs",
        type=int,
        default=None,
        help="runs per server; the median is shown (default 3, 1 with --quick)",
    )
    ap.add_argument("--quick", action="store_true", help="a small smoke version")
    ap.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help=f"only these workloads: {', '.join(WORKLOADS)}; or sync ({', '.join(SYNC_PARTS)}), "
        "which runs only when named",
    )
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument(
        "--sync-size",
        type=parse_size,
        metavar="SIZE",
        help="sync: the large image's size, e.g. 256M (default 1G, 64M with --quick)",
    )
    ap.add_argument(
        "--sync-repos",
        type=int,
        metavar="N",
        help="sync: repositories of the no-change sync (default 100, 10 with --quick)",
    )
    ap.add_argument(
        "--sync-tags", type=int, metavar="N", help="sync: tags per repository (default 50)"
    )
    ap.add_argument(
        "--servers",
        choices=["both", *SERVER_NAMES],
        default="both",
        help="the registry workloads' servers (sync always runs both sides)",
    )
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=CHECKOUT / ".bench",
        help="where blobs and server data go (default: .bench in the checkout)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    if args.runs is not None and not 1 <= args.runs <= 50:
        ap.error("--runs must be between 1 and 50")
    if args.sync_size is not None and not MiB <= args.sync_size <= 64 * 1024 * MiB:
        ap.error("--sync-size must be between 1M and 64G")
    if args.sync_repos is not None and not 1 <= args.sync_repos <= 1000:
        ap.error("--sync-repos must be between 1 and 1000")
    if args.sync_tags is not None and not 1 <= args.sync_tags <= 100:
        ap.error("--sync-tags must be between 1 and 100")
    return args


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(description: str) -> int:
    """`scripts/bench`: `description` heads its --help."""
    args = parse_args(sys.argv[1:], description)
    sp = sync_params(args)
    # SIGTERM unwinds like Ctrl-C, so the servers are stopped and the work directory removed
    signal.signal(signal.SIGTERM, interrupt)
    try:
        import uvloop  # the client's loop; the same for both servers
    except ImportError:
        uvloop = None
    try:
        if uvloop is None:
            return asyncio.run(benchmark(args, sp))
        return uvloop.run(benchmark(args, sp))
    except KeyboardInterrupt:
        print("interrupted: servers stopped, work directory removed", file=sys.stderr)
        return 130
