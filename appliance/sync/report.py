"""What a sync run did: the run's `SyncReport`, one `SourceReport` per upstream, and their JSON.

`SyncReport.to_json()` is what `connected-registry sync --output json` prints, what the control
socket's `report` event carries (registry/control_socket.py), and what `Progress.summary` sums
up for `status`. Errors are `Problem`s (problems.py) in the report and `CODE: message` strings
in the JSON. Timestamps are UTC to the second, `2024-05-01T10:00:00Z` (`stamp`), in the JSON as
in the node state and in what the run tells the parent."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from appliance.sync.copy import Transfer
from appliance.sync.problems import Problem
from appliance.sync.push import PushReport
from appliance.sync.schedule import Window

STAMP = "%Y-%m-%dT%H:%M:%SZ"


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(STAMP)


@dataclass
class SourceReport:
    source: str
    transfer: Transfer = field(default_factory=Transfer)
    requests: int = 0
    repositories_checked: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    unreachable: bool = False
    # The parent's change feed: "full" (reconcile all in scope), "changes" (only what it
    # named), "idle" (nothing changed), "closed" (outside the window); a plain upstream's is
    # "not due" (its schedule) or "".
    feed: str = ""
    window_closed: bool = False
    # Push sync to the parent (ReadWrite devices only); its conflicts go into status details.
    push: PushReport | None = None
    # Repositories removed because they left the scope (ReadOnly devices, full reconciles).
    removed: list[str] = field(default_factory=list)

    def absorb(self, other: SourceReport) -> None:
        """Add a pull's outcome to this (the parent's) report."""
        self.transfer.add(other.transfer)
        self.repositories_checked += other.repositories_checked
        self.warnings += other.warnings
        self.errors += other.errors
        self.unreachable = self.unreachable or other.unreachable
        self.window_closed = self.window_closed or other.window_closed

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "feed": self.feed or None,
            "repositoriesChecked": self.repositories_checked,
            "requests": self.requests,
            **_transfer_json(self.transfer),
            "warnings": self.warnings,
            "errors": [str(error) for error in self.errors],
            "push": self.push.to_json() if self.push is not None else None,
            "repositoriesRemoved": self.removed,
        }


@dataclass
class SyncReport:
    dry_run: bool
    seconds: float = 0.0
    run_id: str = ""
    sources: list[SourceReport] = field(default_factory=list)
    # The parent's window at the start of the run (None: no parent).
    window: Window | None = None
    settings_updated: bool = False

    @property
    def stopped_by_window(self) -> bool:
        return any(report.window_closed for report in self.sources)

    @property
    def total(self) -> Transfer:
        total = Transfer()
        for report in self.sources:
            total.add(report.transfer)
        return total

    @property
    def requests(self) -> int:
        return sum(report.requests for report in self.sources)

    @property
    def errors(self) -> list[Problem]:
        return [error for report in self.sources for error in report.errors]

    def to_json(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "dryRun": self.dry_run,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "total": _transfer_json(self.total),
            "settingsUpdated": self.settings_updated,
            "window": _window_json(self.window),
            "windowClosedDuringRun": self.stopped_by_window,
            "sources": [report.to_json() for report in self.sources],
        }


def _window_json(window: Window | None) -> dict[str, Any] | None:
    if window is None:
        return None
    return {
        "open": window.open,
        "closesAt": stamp(window.closes_at) if window.closes_at else None,
        "opensAt": stamp(window.opens_at) if window.opens_at else None,
    }


def _transfer_json(transfer: Transfer) -> dict[str, Any]:
    fields = asdict(transfer)
    return {
        "repositories": fields["repositories"],
        "manifests": fields["manifests"],
        "blobs": fields["blobs"],
        "bytes": fields["bytes"],
        "bytesResumed": fields["resumed_bytes"],
        "blobsMounted": fields["mounted"],
        "tagsMoved": fields["tags_moved"],
        "tagsDeleted": fields["tags_deleted"],
        "manifestsDeleted": fields["manifests_deleted"],
        "tagsKeptLocal": fields["tags_kept"],
    }
