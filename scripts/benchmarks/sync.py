"""What sync-copy and sync-idle share: our root and a docker-registry (#1) to copy from, both
holding what the parts pushed to them once; and `connected-registry sync` run, measured and
its JSON report checked."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import WorkloadError
from benchmarks.commands import Measured, appliance_command, cli_env, run_measured
from benchmarks.images import LargeImage
from benchmarks.params import SyncParams
from benchmarks.servers import Distribution, Root

SYNC_TIMEOUT = 1800.0  # seconds: one sync command or skopeo copy, even of a large image


@dataclass
class SyncBench:
    """What every run of the sync part shares: the root and the docker-registry they copy from,
    both holding the large image and the fleet, made once."""

    sp: SyncParams
    work_dir: Path
    root: Root
    upstream: Distribution
    image: LargeImage | None = None  # only made for sync-copy
    notes: dict[str, str] = field(default_factory=dict)  # for the report

    def run_dir(self, run: int) -> Path:
        folder = self.work_dir / f"run{run}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def measured_sync(*args: str) -> Measured:
    return run_measured(
        appliance_command("sync", *args, "--output", "json"), SYNC_TIMEOUT, cli_env()
    )


def sync_report(
    result: Measured,
    what: str,
    feed: str | None = None,
    tags_moved: int | None = None,
    blob_bytes: int | None = None,
) -> dict[str, Any]:
    """The JSON report of a `sync` run, checked: no errors, and what was expected moved."""
    if result.returncode != 0:
        raise WorkloadError(f"{what}: sync exited {result.returncode}: {result.stderr[-300:]}")
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        raise WorkloadError(f"{what}: sync printed no JSON: {result.stdout[-300:]}") from None
    problems = [e for source in report["sources"] for e in source["errors"]]
    total = report["total"]
    if feed is not None and report["sources"][0]["feed"] != feed:
        problems.append(f"feed {report['sources'][0]['feed']!r}, expected {feed!r}")
    if tags_moved is not None and total["tagsMoved"] != tags_moved:
        problems.append(f"{total['tagsMoved']} tags moved, expected {tags_moved}")
    if tags_moved == 0 and (total["manifests"] or total["blobs"]):
        problems.append(f"{total['manifests']} manifests, {total['blobs']} blobs moved")
    if blob_bytes is not None and total["bytes"] != blob_bytes:
        problems.append(f"{total['bytes']} bytes moved, expected {blob_bytes}")
    if problems:
        raise WorkloadError(f"{what}: {'; '.join(map(str, problems[:3]))}")
    return report
