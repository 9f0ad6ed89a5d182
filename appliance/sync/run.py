"""One sync run: the config's `[[upstream]]`s, then this node's parent, each pulled.

The upstreams of a node:
- its parent, on an activated connected registry: `parent_protocol://parent_endpoint` with the
  sync token (Bearer through the parent's token endpoint), trusting `tls/parent-ca.crt` when
  activation pinned one, else the system store;
- every `[[upstream]]` of the config, on any node (a root, a device, a development registry),
  always by full reconcile.

With the parent, one run is one conversation over one gateway session (PROTOCOL.md §3):
1. settings, with If-None-Match on the stored ETag: on 200 they are stored and their client
   tokens and children's sync tokens applied (`Credentials.replace_from_parent` of
   `served_tokens`: children pull and push here with them), so repositories, tag filters, tokens,
   schedule, window, TTL and log level take effect in this very run; on 304 the cache is used;
   an unreachable parent means the cache, `connection_state = Offline`, and nothing else;
2. the window (`schedule.py`): outside it nothing more is asked or moved and the report says
   when the next one opens; inside it, its end is the run's deadline;
3. the change feed since `changes_cursor`: no cursor, `reset`, a changed scope, a resync asked
   by the root, or a parent without a feed → a full reconcile of the scope; otherwise only the
   repositories the feed names are reconciled (deletions included: the reconcile deletes tags
   gone upstream by the existing rules), and none at all when it names none. The feed position
   is stored only after a run that finished cleanly, so a failed or stopped run is re-read;
4. `Syncing` is reported before content moves, and the run's outcome after: `Online` with
   `lastSyncTime`, or the errors of the whole run (plain upstreams' too) as `statusDetails`,
   which the root shows as `Unhealthy`.
An idle device thus costs settings (304) + changes + status: three requests.

A lock on `<data_dir>/sync.lock` (flock, released by the kernel when the process dies) makes
overlapping runs impossible. The node state records `connection_state`, `last_contact`,
`last_sync_time` (a run that completed without errors) and `changes_cursor`; they are what
`connected-registry status` shows.

On a ReadWrite device the outbox is replayed to the parent (push.py) after the window check and
before the change feed; its conflicts (the parent wins) go into the status details, and the
repositories where the parent won are pulled in the same run so the device's tags follow.

Every client a run makes (pull and push, parent and plain upstreams) shares the process's one
token bucket for `[sync] bandwidth_limit` (bandwidth.py), so the limit holds for all transfers
together.

A run goes on in whichever process calls `run_sync`: the running service when
`connected-registry sync` reaches it over `control.sock` (control/local.py), else the command
itself. Its `Progress` (progress.py) is live under its run id, which the report and every log
line carry; the last run that was not dry is summed up in the node state (`last_run`).

The parent's log level applies to the process the run is in (the service's, through the
socket). A plain upstream with a `schedule` (cron, UTC) is pulled only by the first run after
each occurrence (`upstream_run/<url>` in node_state records its last complete run); the others
are pulled by every run. On a ReadOnly device a clean full reconcile also removes the
repositories that left every scope (`remove_out_of_scope`), and `connected-registry resync`
(resync.py) makes the next run a full reconcile.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.auth.scopes import matches
from appliance.auth.tokens import CredentialError, Credentials
from appliance.config import Config
from appliance.control.descendants import served_tokens
from appliance.control.gateway_client import GatewayClient, GatewayError, ParentUnreachable
from appliance.control.hierarchy import CONFLICT_DETAIL, OFFLINE, ONLINE, READ_WRITE, SYNCING
from appliance.control.node import CONNECTED, NodeState
from appliance.control.schedule import ScheduleError
from appliance.oci.errors import OCIError
from appliance.storage.schema import write_transaction
from appliance.storage.store import Origin, Store
from appliance.sync.client import RegistryClient, RegistryError, UpstreamUnreachable
from appliance.sync.content import repositories_in_scope
from appliance.sync.copy import RepositoryCopy, Transfer, WindowClosed
from appliance.sync.progress import Progress, current_progress, tracking
from appliance.sync.push import TAG_CONFLICT, Push, PushReport, parent_tag_key, pending
from appliance.sync.schedule import (
    NO_DEADLINE,
    Clock,
    Deadline,
    Window,
    last_occurrence,
    next_occurrence,
    utc_now,
    window_at,
)
from appliance.sync.sources import Source, SyncError, parent_source, upstream_sources
from appliance.system.logs import fields, run_context

log = logging.getLogger(__name__)

PARENT_UNREACHABLE = "PARENT_UNREACHABLE"
# node_state key: the parent's change-feed position this node has applied.
CHANGES_CURSOR = "changes_cursor"
# node_state key: the last run that was not dry, summed up (Progress.summary) for `status`.
LAST_RUN = "last_run"
# node_state key: `connected-registry resync` on this node asked for a full reconcile.
RESYNC_REQUESTED = "resync_requested"
# node_state key prefix: when a scheduled `[[upstream]]` (by URL) last completed a run.
UPSTREAM_RUN = "upstream_run/"
STAMP = "%Y-%m-%dT%H:%M:%SZ"
# Pages of the feed read in one run (1000 changes each on our parent): a bound, not a target;
# the rest is read at the next run.
MAX_FEED_PAGES = 50
MAX_STATUS_DETAILS = 20
LOG_LEVELS = {
    "Debug": logging.DEBUG,
    "Information": logging.INFO,
    "Warning": logging.WARNING,
    "Error": logging.ERROR,
    "None": logging.CRITICAL + 1,
}


class AlreadyRunning(Exception):
    pass


@dataclass
class SourceReport:
    source: str
    transfer: Transfer = field(default_factory=Transfer)
    requests: int = 0
    repositories_checked: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unreachable: bool = False
    # The parent's change feed: "full" (reconcile all in scope), "changes" (only what it
    # named), "idle" (nothing changed), "closed" (outside the window); "" for plain upstreams.
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
    def errors(self) -> list[str]:
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
            "sources": [
                {
                    "source": r.source,
                    "feed": r.feed or None,
                    "repositoriesChecked": r.repositories_checked,
                    "requests": r.requests,
                    **_transfer_json(r.transfer),
                    "warnings": r.warnings,
                    "errors": r.errors,
                    "push": r.push.to_json() if r.push is not None else None,
                    "repositoriesRemoved": r.removed,
                }
                for r in self.sources
            ],
        }


def _window_json(window: Window | None) -> dict[str, Any] | None:
    if window is None:
        return None
    return {
        "open": window.open,
        "closesAt": _stamp(window.closes_at),
        "opensAt": _stamp(window.opens_at),
    }


def _stamp(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


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
        "tagsKeptLocal": fields["tags_kept"],
    }


# -- the lock --------------------------------------------------------------------------------


@contextmanager
def sync_lock(lock_path: Path) -> Iterator[None]:
    """Held for the whole run; AlreadyRunning if another process holds it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning() from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


# -- the run ---------------------------------------------------------------------------------


async def run_sync(
    store: Store,
    config: Config,
    dry_run: bool = False,
    clock: Clock = utc_now,
    progress: Progress | None = None,
) -> SyncReport:
    """Sync every upstream; failures are in the report (`errors`), never raised, so one
    unreachable upstream does not stop the others. `clock` is UTC wall time, injected so the
    window and its deadline can be tested. `progress` (a new one when None) follows the run
    live; its run id is the report's and every log line's. A run that is not dry is summed up
    in the node state (`last_run`) for `connected-registry status`."""
    progress = progress or Progress(dry_run)
    with tracking(progress), run_context(progress.run_id):
        report = await _run(store, config, dry_run, clock)
    report.run_id = progress.run_id
    progress.finish()
    if not dry_run:
        NodeState(store).set(LAST_RUN, json.dumps(progress.summary(report.to_json())))
    return report


async def _run(store: Store, config: Config, dry_run: bool, clock: Clock) -> SyncReport:
    started = time.monotonic()
    report = SyncReport(dry_run)
    node = NodeState(store)
    # Plain upstreams first, so the status the parent gets at the end lists their errors too.
    # They are not under the parent's window: each follows its own `schedule`, if it has one.
    for source in upstream_sources(config):
        now = clock()
        if not _due(store, source, now):
            report.sources.append(_not_due(source, now))
            continue
        pulled = await _sync_source(store, source, node.mode, dry_run)
        if not dry_run and not pulled.errors:
            store.set_state(UPSTREAM_RUN + source.url, now.strftime(STAMP))
        report.sources.append(pulled)
    if node.role == CONNECTED:
        report.sources.insert(0, await _sync_parent(store, config, node, report, dry_run, clock))
    report.seconds = time.monotonic() - started
    # A last sync is one that completed: not one that failed, stopped, or did not run.
    in_window = report.window is None or report.window.open
    if not dry_run and not report.errors and not report.stopped_by_window and in_window:
        node.set("last_sync_time", _now())
    return report


async def _sync_parent(
    store: Store, config: Config, node: NodeState, run: SyncReport, dry_run: bool, clock: Clock
) -> SourceReport:
    """Settings, window, change feed, pull, status: one conversation with the parent over one
    gateway session, so an idle run costs settings (304) + changes + status."""
    try:
        gateway = GatewayClient.for_node(store)
    except GatewayError as err:
        raise SyncError(f"{err.code}: {err.message}") from None
    cached = node.settings() or {}
    report = SourceReport(f"parent {gateway.endpoint}")
    current_progress().set_phase("settings", report.source)
    client: RegistryClient | None = None
    async with gateway:
        settings = await _refresh_settings(store, node, gateway, cached, report, run, dry_run)
        if settings is None:
            # The parent no longer knows this registry: nothing else it would answer.
            _record_contact(node, dry_run, reachable=True)
            report.requests = gateway.requests
            return report
        _apply_log_level(settings.get("logLevel"))
        if report.unreachable:
            _record_contact(node, dry_run, reachable=False)
            report.requests = gateway.requests
            return report
        _record_contact(node, dry_run, reachable=True)
        try:
            schedule, window = settings.get("syncSchedule"), settings.get("syncWindow")
            run.window = window_at(schedule, window, clock())
        except ScheduleError as err:
            report.errors.append(f"SETTINGS_INVALID: {err}")
            run.window = Window(open=True)
        if not run.window.open:
            # Outside the window nothing moves; the parent hears from us at the next window.
            report.feed = "closed"
            report.requests = gateway.requests
            return report
        source = parent_source(store, settings, config.bandwidth_limit)
        pusher: RegistryClient | None = None
        if node.mode == READ_WRITE:
            # Before the pull: the device's own writes go up first, so a conflict is decided
            # (the parent wins) before the pull brings the parent's tags down.
            pusher = source.client()
            current_progress().set_phase("pushing")
            report.push = await _push(store, source, pusher, settings, report, dry_run)
        if report.unreachable:
            plan = _Plan(full=False, repositories=[], cursor=None)
        else:
            plan = await _plan(node, gateway, cached, settings, report)
        if report.push is not None and not plan.full and report.push.pull:
            # Repositories where the parent won a conflict: our tag follows it in this run.
            plan.repositories = sorted(set(plan.repositories) | report.push.pull)
        if not report.unreachable and (plan.full or plan.repositories):
            if not dry_run:
                await _report(gateway, {"state": SYNCING}, report)
            deadline = Deadline(run.window.closes_at, clock)
            client = source.client()
            named = None if plan.full else plan.repositories
            pulled = await _pull(
                store, source, client, node.mode, dry_run, deadline, named, plan.untagged
            )
            report.absorb(pulled)
        clean = not report.errors and not report.unreachable and not report.window_closed
        if clean and plan.full and node.mode != READ_WRITE:
            # Only after a clean full reconcile: the scope was just read whole from the parent.
            report.removed = remove_out_of_scope(store, source.repositories, config, dry_run)
        if clean and not dry_run and plan.cursor is not None:
            node.set(CHANGES_CURSOR, str(plan.cursor))
        if clean and not dry_run and plan.full:
            store.delete_state(RESYNC_REQUESTED)
        if report.unreachable:
            _record_contact(node, dry_run, reachable=False)
        elif not dry_run:
            status: dict[str, Any] = {
                "state": ONLINE,
                "version": __version__,
                "loginServer": node.get("login_server") or "",
                "statusDetails": _status_details(
                    run.errors + report.errors + (report.push.conflicts if report.push else []),
                    clock,
                ),
            }
            if not run.errors and not report.errors and not report.window_closed:
                # This run is the last sync (`last_sync_time` is set for it after the run); a
                # run the window stopped is not complete, so the root keeps the previous one.
                status["lastSyncTime"] = _now()
            if clean and plan.full and settings.get("resync"):
                status["resyncDone"] = True
            await _report(gateway, status, report)
    report.requests = gateway.requests + sum(c.requests for c in (client, pusher) if c is not None)
    return report


async def _push(
    store: Store,
    source: Source,
    client: RegistryClient,
    settings: dict[str, Any],
    report: SourceReport,
    dry_run: bool,
) -> PushReport:
    """Replay the outbox to the parent (push.py); its errors become the run's."""
    if dry_run:
        # What would move: the rows waiting (a dry run sends nothing that changes the parent).
        waiting = PushReport()
        waiting.rows = pending(store)
        return waiting
    async with client:
        pushed = await Push(store, client, source.repositories, settings.get("messageTtl")).run()
    report.warnings += pushed.warnings
    if pushed.unreachable:
        report.unreachable = True
        report.errors += [
            f"{PARENT_UNREACHABLE}: {error.partition(': ')[2]}"
            for error in pushed.errors
            if error.startswith("UPSTREAM_UNREACHABLE")
        ]
        report.errors += [e for e in pushed.errors if not e.startswith("UPSTREAM_UNREACHABLE")]
    else:
        report.errors += pushed.errors
    return pushed


async def _refresh_settings(
    store: Store,
    node: NodeState,
    gateway: GatewayClient,
    cached: dict[str, Any],
    report: SourceReport,
    run: SyncReport,
    dry_run: bool,
) -> dict[str, Any] | None:
    """The settings this run works with: the parent's when they changed (stored, client tokens
    applied), else the cache (304, or the parent unreachable or refusing); None when the parent
    has no such connected registry (deleted there), an error in `report`."""
    try:
        fresh = await gateway.settings(node.get("settings_etag"))
    except ParentUnreachable as err:
        report.unreachable = True
        report.errors.append(f"{PARENT_UNREACHABLE}: cannot reach {err.endpoint}: {err.reason}")
        return cached
    except GatewayError as err:
        if err.code == "NAME_UNKNOWN":
            report.errors.append(
                f"NAME_UNKNOWN: the parent has no connected registry {gateway.registry_name!r} "
                "(deleted there?); `connected-registry deactivate --force` releases this node"
            )
            return None
        report.errors.append(f"{err.code}: settings: {err.message}")
        return cached
    if fresh is None:
        return cached
    run.settings_updated = True
    if dry_run:
        return fresh.body
    try:
        with write_transaction(store.db):
            # Tokens, repositories, schedule, window, TTL and log level all take effect now.
            Credentials(store.db).replace_from_parent(served_tokens(fresh.body))
            node.set("settings", json.dumps(fresh.body, sort_keys=True))
            if fresh.etag:
                node.set("settings_etag", fresh.etag)
            else:
                store.delete_state("settings_etag")
    except CredentialError as err:
        report.errors.append(f"SETTINGS_INVALID: the parent's client tokens: {err}")
        return cached
    return fresh.body


@dataclass
class _Plan:
    """What to pull: every repository in scope (`full`), or only those the feed named."""

    full: bool
    repositories: list[str]
    # The feed position to store once the pull finished cleanly (None: keep what is stored).
    cursor: int | None
    # Manifests the feed says were put by digest, per repository: a signature or SBOM attached
    # to an image whose tags did not move, which comparing tags would not find.
    untagged: dict[str, list[str]] = field(default_factory=dict)


async def _plan(
    node: NodeState,
    gateway: GatewayClient,
    cached: dict[str, Any],
    settings: dict[str, Any],
    report: SourceReport,
) -> _Plan:
    """Ask the change feed what changed since the stored cursor (PROTOCOL.md §3). A full
    reconcile when there is no cursor, the feed says `reset`, the scope changed (the feed only
    names repositories that changed, not ones newly in scope), a resync was asked for, or the
    parent offers no feed."""
    stored = node.get(CHANGES_CURSOR)
    cursor = int(stored) if stored and stored.isdigit() else None
    asked = bool(settings.get("resync")) or node.get(RESYNC_REQUESTED) is not None
    full = cursor is None or asked or _scope(cached) != _scope(settings)
    named: set[str] = set()
    untagged: dict[str, list[str]] = {}
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
                if change.get("op") == "put" and change.get("tag") is None:
                    digests = untagged.setdefault(change["repository"], [])
                    if isinstance(change.get("digest"), str) and change["digest"] not in digests:
                        digests.append(change["digest"])
            if not answer.get("more"):
                break
    except ParentUnreachable as err:
        report.unreachable = True
        report.errors.append(f"{PARENT_UNREACHABLE}: cannot reach {err.endpoint}: {err.reason}")
        return _Plan(full=False, repositories=[], cursor=None)
    except GatewayError as err:
        # A parent without a feed (an older release, or a plain registry in its place) still
        # gets a correct, if dearer, full reconcile.
        report.warnings.append(f"no change feed from the parent ({err.code}): full reconcile")
        report.feed = "full"
        return _Plan(full=True, repositories=[], cursor=None)
    if full:
        report.feed = "full"
        return _Plan(full=True, repositories=[], cursor=position)
    report.feed = "changes" if named else "idle"
    return _Plan(full=False, repositories=sorted(named), cursor=position, untagged=untagged)


def remove_out_of_scope(store: Store, scope: list[str], config: Config, dry_run: bool) -> list[str]:
    """Remove the repositories of a ReadOnly node that no longer match the parent's scope nor
    any `[[upstream]]`'s (DESIGN.md §2): everything on such a node came from upstream, so what
    is out of every scope is stale, and keeping it would serve content the parent withdrew.
    On a ReadWrite node a client's own pushes live beside the parent's, so nothing goes there.
    The names removed (in a dry run: that would be)."""
    kept = scope + [entry for upstream in config.upstreams for entry in upstream.repositories]
    removed: list[str] = []
    last: str | None = None
    while True:
        names, more = store.repositories(1000, last)
        for name in names:
            if not any(matches(entry, name) for entry in kept):
                removed.append(name)
        if not more or not names:
            break
        last = names[-1]
    for name in removed if not dry_run else []:
        store.remove_repository(name, Origin.PARENT)
        for key in store.state_keys(parent_tag_key(name, "")):
            store.delete_state(key)
        log.info("removed repository %s: it left the sync scope", name)
    return removed


def _scope(settings: dict[str, Any]) -> tuple[Any, ...]:
    return (
        sorted(settings.get("repositories") or []),
        settings.get("tagInclude"),
        settings.get("tagExclude"),
        settings.get("tagSemver"),
    )


async def _report(gateway: GatewayClient, status: dict[str, Any], report: SourceReport) -> None:
    """A status report upward; a failure is a warning (the content moved all the same)."""
    try:
        await gateway.report_status(status)
    except ParentUnreachable as err:
        report.unreachable = True
        report.errors.append(f"{PARENT_UNREACHABLE}: cannot reach {err.endpoint}: {err.reason}")
    except GatewayError as err:
        warning = f"the parent refused the status report: {err.code}: {err.message}"
        if warning not in report.warnings:  # the run's Syncing and its end: one is enough
            report.warnings.append(warning)


def _status_details(errors: list[str], clock: Clock) -> list[dict[str, str]]:
    """The run's errors as status details (PROTOCOL.md §3), one correlation id per run."""
    correlation = str(uuid.uuid4())
    timestamp = clock().strftime("%Y-%m-%dT%H:%M:%SZ")
    details = []
    for error in errors[:MAX_STATUS_DETAILS]:
        code, _, description = error.partition(": ")
        details.append(
            {
                "type": _detail_type(code),
                "code": code,
                "description": description or error,
                "timestamp": timestamp,
                "correlationId": correlation,
            }
        )
    return details


def _detail_type(code: str) -> str:
    if "UNREACHABLE" in code:
        return "ConnectivityError"
    # The parent won a tag both sides moved: reported, nothing failed (PROTOCOL.md §4).
    return CONFLICT_DETAIL if code == TAG_CONFLICT else "SyncError"


def _record_contact(node: NodeState, dry_run: bool, reachable: bool) -> None:
    if dry_run:
        return
    node.set("connection_state", ONLINE if reachable else OFFLINE)
    if reachable:
        node.set("last_contact", _now())


def _apply_log_level(level: Any) -> None:
    """The parent's logLevel for the rest of this process (the service applies it likewise)."""
    if isinstance(level, str) and level in LOG_LEVELS:
        logging.getLogger("appliance").setLevel(LOG_LEVELS[level])


def _due(store: Store, source: Source, now: datetime) -> bool:
    """An upstream with a schedule runs when an occurrence has passed since its last complete
    run (or it never completed one); one without runs every time."""
    if source.schedule is None:
        return True
    last = store.state(UPSTREAM_RUN + source.url)
    if last is None:
        return True
    done = datetime.strptime(last, STAMP).replace(tzinfo=UTC)
    return last_occurrence(source.schedule, now) > done


def _not_due(source: Source, now: datetime) -> SourceReport:
    assert source.schedule is not None
    report = SourceReport(source.label, feed="not due")
    due = next_occurrence(source.schedule, now).strftime(STAMP)
    report.warnings.append(f"not due: its schedule {source.schedule!r} runs it next at {due}")
    return report


async def _sync_source(store: Store, source: Source, mode: str, dry_run: bool) -> SourceReport:
    client = source.client()
    report = await _pull(store, source, client, mode, dry_run, NO_DEADLINE, None)
    report.requests = client.requests
    return report


async def _pull(
    store: Store,
    source: Source,
    client: RegistryClient,
    mode: str,
    dry_run: bool,
    deadline: Deadline,
    named: list[str] | None,
    untagged: dict[str, list[str]] | None = None,
) -> SourceReport:
    """Reconcile `named` repositories, or (None) every repository in the source's scope; then
    copy the manifests `untagged` names by digest (from the change feed)."""
    report = SourceReport(source.label)
    current_progress().set_phase("pulling", source.label)
    async with client:
        try:
            if named is None:
                scope = await repositories_in_scope(client, source.repositories)
                report.warnings += scope.warnings
                repositories = scope.repositories
            else:
                repositories = named
            current_progress().repositories_found(len(repositories))
            for repository in repositories:
                if deadline.passed():
                    raise WindowClosed()
                report.repositories_checked += 1
                current_progress().repository_started(repository)
                copy = RepositoryCopy(
                    client,
                    store,
                    repository,
                    source.tag_filter,
                    mode,
                    dry_run=dry_run,
                    deadline=deadline,
                )
                try:
                    await copy.reconcile()
                    await copy.copy_untagged((untagged or {}).get(repository, []))
                except (UpstreamUnreachable, WindowClosed):
                    report.transfer.add(copy.transfer)
                    raise
                except (RegistryError, OCIError) as err:
                    report.errors.append(f"{_code(err)}: {repository}: {_message(err)}")
                    log.warning(
                        "%s: %s: %s",
                        repository,
                        _code(err),
                        _message(err),
                        extra=fields(repository=repository),
                    )
                report.transfer.add(copy.transfer)
                _log_copied(repository, copy.transfer, dry_run)
                current_progress().repository_finished()
        except WindowClosed:
            report.window_closed = True
            report.warnings.append("the sync window closed: stopped; the rest follows next window")
        except UpstreamUnreachable as err:
            report.unreachable = True
            code = PARENT_UNREACHABLE if source.is_parent else err.code
            report.errors.append(f"{code}: {err.message}")
        except RegistryError as err:
            report.errors.append(f"{err.code}: {err.message}")
    return report


def _log_copied(repository: str, moved: Transfer, dry_run: bool) -> None:
    """One journal line per repository that changed, with its REPOSITORY field."""
    if not (moved.manifests or moved.tags_moved or moved.tags_deleted or moved.blobs):
        return
    log.info(
        "%s %s: %d manifests, %d blobs (%d bytes), %d tags moved, %d deleted",
        "would copy" if dry_run else "copied",
        repository,
        moved.manifests,
        moved.blobs,
        moved.bytes,
        moved.tags_moved,
        moved.tags_deleted,
        extra=fields(repository=repository),
    )


def _code(err: RegistryError | OCIError) -> str:
    return err.code if isinstance(err, RegistryError) else err.code.name


def _message(err: RegistryError | OCIError) -> str:
    return err.message


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
