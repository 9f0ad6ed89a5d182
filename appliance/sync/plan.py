"""What to pull from the parent this run: the change feed since `changes_cursor` read into a
`Plan` (PROTOCOL.md §3).

No cursor, `reset`, a changed scope, a resync asked by the root or here (`connected-registry
resync`, resync.py), or a parent without a feed → a full reconcile of the scope; otherwise only
the repositories the feed names (deletions included: the reconcile deletes tags gone upstream
by the existing rules), and none at all when it names none. The feed position is stored only
after a run that finished cleanly (parent.py), so a failed or stopped run is re-read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.control.gateway_client import GatewayClient, GatewayError, ParentUnreachable
from appliance.control.node import NodeState
from appliance.sync.problems import parent_unreachable
from appliance.sync.report import SourceReport

# node_state key: the parent's change-feed position this node has applied.
CHANGES_CURSOR = "changes_cursor"
# node_state key: `connected-registry resync` on this node asked for a full reconcile.
RESYNC_REQUESTED = "resync_requested"
# Pages of the feed read in one run (1000 changes each on our parent): a bound, not a target;
# the rest is read at the next run.
MAX_FEED_PAGES = 50


@dataclass
class Plan:
    """What to pull: every repository in scope (`full`), or only those the feed named."""

    full: bool
    repositories: list[str]
    # The feed position to store once the pull finished cleanly (None: keep what is stored).
    cursor: int | None
    # Manifests the feed says were put by digest, per repository: a signature or SBOM attached
    # to an image whose tags did not move, which comparing tags would not find.
    untagged: dict[str, list[str]] = field(default_factory=dict)
    # Manifests the feed says were deleted by digest, per repository (and not put again later in
    # the feed): deleted here too, on a ReadWrite node unless this node changed them (copy.py).
    deleted: dict[str, list[str]] = field(default_factory=dict)


async def read_plan(
    node: NodeState,
    gateway: GatewayClient,
    cached: dict[str, Any],
    settings: dict[str, Any],
    report: SourceReport,
) -> Plan:
    """Ask the change feed what changed since the stored cursor. A full reconcile when there is
    no cursor, the feed says `reset`, the scope changed (the feed only names repositories that
    changed, not ones newly in scope), a resync was asked for, or the parent offers no feed.
    `cached` are the settings of the last run, `settings` this run's; what the feed was is in
    `report.feed`, an unreachable parent in its errors."""
    stored = node.get(CHANGES_CURSOR)
    cursor = int(stored) if stored and stored.isdigit() else None
    asked = bool(settings.get("resync")) or node.get(RESYNC_REQUESTED) is not None
    full = cursor is None or asked or _scope(cached) != _scope(settings)
    named: set[str] = set()
    untagged: dict[str, list[str]] = {}
    deleted: dict[str, list[str]] = {}
    position = 0 if full else cursor
    try:
        for _ in range(MAX_FEED_PAGES):
            answer = await gateway.changes(position)
            position = answer["cursor"]
            if answer.get("reset"):
                full = True
            if full:
                break  # what exists now is reconciled; the feed's position is all we need
            for change in answer["changes"]:
                if not isinstance(change, dict) or not isinstance(change.get("repository"), str):
                    continue
                named.add(change["repository"])
                _note(change, untagged, deleted)
            if not answer.get("more"):
                break
    except ParentUnreachable as err:
        report.unreachable = True
        report.errors.append(parent_unreachable(err))
        return Plan(full=False, repositories=[], cursor=None)
    except GatewayError as err:
        # A parent without a feed (an older release, or a plain registry in its place) still
        # gets a correct, if dearer, full reconcile.
        report.warnings.append(f"no change feed from the parent ({err.code}): full reconcile")
        report.feed = "full"
        return Plan(full=True, repositories=[], cursor=None)
    if full:
        report.feed = "full"
        return Plan(full=True, repositories=[], cursor=position)
    report.feed = "changes" if named else "idle"
    return Plan(
        full=False,
        repositories=sorted(named),
        cursor=position,
        untagged=untagged,
        deleted={repo: digests for repo, digests in deleted.items() if digests},
    )


def _note(
    change: dict[str, Any], untagged: dict[str, list[str]], deleted: dict[str, list[str]]
) -> None:
    """Fold one change into the by-digest puts and deletes, in feed order: the last word on a
    digest wins (a manifest deleted then pushed again is not deleted here, and the reverse)."""
    digest = change.get("digest")
    if not isinstance(digest, str):
        return
    repository = change["repository"]
    puts = untagged.setdefault(repository, [])
    gone = deleted.setdefault(repository, [])
    if change.get("op") == "put":
        if digest in gone:
            gone.remove(digest)
        if change.get("tag") is None and digest not in puts:
            puts.append(digest)
    elif change.get("op") == "delete" and change.get("tag") is None:
        if digest in puts:
            puts.remove(digest)
        if digest not in gone:
            gone.append(digest)


def _scope(settings: dict[str, Any]) -> tuple[Any, ...]:
    return (
        sorted(settings.get("repositories") or []),
        settings.get("tagInclude"),
        settings.get("tagExclude"),
        settings.get("tagSemver"),
    )
