"""One module per workload. A registry workload (`Workload`) runs against one server at a time
and returns its figures; a sync workload (`SyncWorkload`) runs one step per side on the setup
in benchmarks.sync."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.figures import Metric
from benchmarks.images import LargeBlob
from benchmarks.params import Params
from benchmarks.servers import Server
from benchmarks.sync import SyncBench

WORKLOAD_TIMEOUT = 300.0  # seconds: no single workload on one server may take longer


@dataclass
class Target:
    """One server in one run, and what the run's earlier workloads left on it for later ones."""

    server: Server
    run: int
    run_dir: Path
    p: Params
    blobs: list[LargeBlob]  # the large pushes' source files
    large_blobs: list[tuple[str, int]] = field(default_factory=list)  # (repo/blobs/digest, size)
    small_tags: list[tuple[str, str]] = field(default_factory=list)  # (repo, tag)


@dataclass(frozen=True)
class Workload:
    name: str
    metrics: Callable[[Params], list[Metric]]  # its rows of the table, in order
    run: Callable[[Target], Awaitable[dict[str, float]]]  # {metric key: value}


Step = Callable[[SyncBench, int], dict[str, float]]  # (the setup, run) -> {key: value}


@dataclass(frozen=True)
class SyncWorkload:
    name: str
    populate: Callable[[SyncBench], list[Callable[[], Awaitable[None]]]]  # pushes, untimed
    steps: tuple[tuple[str, Step], tuple[str, Step]]  # (side, step), in even runs' order
