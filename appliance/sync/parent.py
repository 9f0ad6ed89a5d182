"""One sync with this node's parent: the conversation of PROTOCOL.md §3, over one gateway
session, in this order:

1. settings, with If-None-Match on the stored ETag: on 200 they are stored and their client
   tokens and children's sync tokens applied (`Credentials.replace_from_parent` of
   `served_tokens`: children pull and push here with them), so repositories, tag filters, tokens,
   schedule, window, TTL and log level take effect in this very run; on 304 the cache is used;
   an unreachable parent means the cache, `connection_state = Offline`, and nothing else;
2. the window (schedule.py): outside it nothing more is asked or moved and the report says
   when the next one opens; inside it, its end is the run's deadline;
3. on a ReadWrite device the outbox replayed upward (push.py): its conflicts (the parent wins)
   go into the status details, and the repositories where the parent won are pulled in the
   same run so the device's tags follow;
4. the change feed (plan.py), then the pull (pull.py) of what it says;
5. `Syncing` reported before content moves, and the run's outcome after: `Online` with
   `lastSyncTime`, or the errors of the whole run (plain upstreams' too) as `statusDetails`,
   which the root shows as `Unhealthy`.
An idle device thus costs settings (304) + changes + status: three requests.

On a ReadOnly device a clean full reconcile also removes the repositories that left every
scope (`remove_out_of_scope`). The parent's log level applies to the process the run is in.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from appliance import __version__
from appliance.auth.scopes import matches
from appliance.auth.tokens import CredentialError, Credentials
from appliance.config import Config
from appliance.control.descendants import served_tokens
from appliance.control.gateway_client import (
    PARENT_UNREACHABLE,
    GatewayClient,
    GatewayError,
    ParentUnreachable,
)
from appliance.control.hierarchy import CONFLICT_DETAIL, OFFLINE, ONLINE, SYNCING
from appliance.control.node import NodeState
from appliance.control.roles import READ_WRITE
from appliance.control.schedule import ScheduleError
from appliance.storage.store import Origin, Store
from appliance.storage.timestamps import timestamp
from appliance.sync.client import UPSTREAM_UNREACHABLE, RegistryClient
from appliance.sync.plan import CHANGES_CURSOR, Plan, read_plan
from appliance.sync.problems import Problem, parent_unreachable
from appliance.sync.progress import current_progress
from appliance.sync.pull import pull
from appliance.sync.push import TAG_CONFLICT, Push, PushReport, parent_tag_key, pending
from appliance.sync.report import STAMP, SourceReport, SyncReport, stamp
from appliance.sync.schedule import Clock, Deadline, Window, utc_now, window_at
from appliance.sync.sources import Source, SyncError, parent_source

log = logging.getLogger(__name__)

MAX_STATUS_DETAILS = 20
LOG_LEVELS = {
    "Debug": logging.DEBUG,
    "Information": logging.INFO,
    "Warning": logging.WARNING,
    "Error": logging.ERROR,
    "None": logging.CRITICAL + 1,
}


async def sync_with_parent(
    store: Store, config: Config, node: NodeState, run: SyncReport, dry_run: bool, clock: Clock
) -> SourceReport:
    """Settings, window, push, change feed, pull, status: one conversation with the parent
    over one gateway session. `run` is the run so far (the plain upstreams' reports, whose
    errors go upward too); its `window` and `settings_updated` are set here. Failures are in
    the report; SyncError only when this node has no parent to talk to (its state is damaged).
    """
    try:
        gateway = GatewayClient.for_node(store)
    except GatewayError as err:
        raise SyncError(err.code, err.message) from None
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
            report.errors.append(Problem("SETTINGS_INVALID", str(err)))
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
            plan = Plan(full=False, repositories=[], cursor=None)
        else:
            plan = await read_plan(node, gateway, cached, settings, report)
        if report.push is not None and not plan.full and report.push.pull:
            # Repositories where the parent won a conflict: our tag follows it in this run.
            plan.repositories = sorted(set(plan.repositories) | report.push.pull)
        if not report.unreachable and (plan.full or plan.repositories):
            if not dry_run:
                await _send_status(gateway, {"state": SYNCING}, report)
            deadline = Deadline(run.window.closes_at, clock)
            client = source.client()
            named = None if plan.full else plan.repositories
            pulled = await pull(
                store,
                source,
                client,
                node.mode,
                dry_run,
                deadline,
                named,
                plan.untagged,
                plan.deleted,
            )
            report.absorb(pulled)
        clean = not report.errors and not report.unreachable and not report.window_closed
        if clean and plan.full and node.mode != READ_WRITE:
            # Only after a clean full reconcile: the scope was just read whole from the parent.
            report.removed = remove_out_of_scope(store, source.repositories, config, dry_run)
        if clean and not dry_run and plan.cursor is not None:
            node.set(CHANGES_CURSOR, str(plan.cursor))
        if clean and not dry_run and plan.full:
            store.node.resync_requested = False
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
                status["lastSyncTime"] = stamp(utc_now())
            if clean and plan.full and settings.get("resync"):
                status["resyncDone"] = True
            await _send_status(gateway, status, report)
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
    report.unreachable = report.unreachable or pushed.unreachable
    # The push's upstream is the parent: its unreachable is the parent's, and told first.
    report.errors += [
        Problem(PARENT_UNREACHABLE, error.message)
        for error in pushed.errors
        if error.code == UPSTREAM_UNREACHABLE
    ]
    report.errors += [error for error in pushed.errors if error.code != UPSTREAM_UNREACHABLE]
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
        report.errors.append(parent_unreachable(err))
        return cached
    except GatewayError as err:
        if err.code == "NAME_UNKNOWN":
            report.errors.append(
                Problem(
                    err.code,
                    f"the parent has no connected registry {gateway.registry_name!r} (deleted "
                    "there?); `connected-registry deactivate --force` releases this node",
                )
            )
            return None
        report.errors.append(Problem(err.code, f"settings: {err.message}"))
        return cached
    if fresh is None:
        return cached
    run.settings_updated = True
    if dry_run:
        return fresh.body
    try:
        with store.transaction():
            # Tokens, repositories, schedule, window, TTL and log level all take effect now.
            Credentials(store.db).replace_from_parent(served_tokens(fresh.body))
            node.set("settings", json.dumps(fresh.body, sort_keys=True))
            if fresh.etag:
                node.set("settings_etag", fresh.etag)
            else:
                store.node.settings_etag = None
    except CredentialError as err:
        report.errors.append(Problem("SETTINGS_INVALID", f"the parent's client tokens: {err}"))
        return cached
    return fresh.body


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
            store.node.delete(key)
        log.info("removed repository %s: it left the sync scope", name)
    return removed


async def _send_status(
    gateway: GatewayClient, status: dict[str, Any], report: SourceReport
) -> None:
    """A status report upward; a failure is a warning (the content moved all the same)."""
    try:
        await gateway.report_status(status)
    except ParentUnreachable as err:
        report.unreachable = True
        report.errors.append(parent_unreachable(err))
    except GatewayError as err:
        warning = f"the parent refused the status report: {err.code}: {err.message}"
        if warning not in report.warnings:  # the run's Syncing and its end: one is enough
            report.warnings.append(warning)


def _status_details(problems: list[Problem], clock: Clock) -> list[dict[str, str]]:
    """The run's errors as status details (PROTOCOL.md §3), one correlation id per run."""
    correlation = str(uuid.uuid4())
    at = clock().strftime(STAMP)
    return [
        {
            "type": _detail_type(problem.code),
            "code": problem.code,
            "description": problem.message,
            "timestamp": at,
            "correlationId": correlation,
        }
        for problem in problems[:MAX_STATUS_DETAILS]
    ]


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
        node.set("last_contact", timestamp(utc_now()))  # storage's one format


def _apply_log_level(level: Any) -> None:
    """The parent's logLevel for the rest of this process (the service applies it likewise)."""
    if isinstance(level, str) and level in LOG_LEVELS:
        logging.getLogger("appliance").setLevel(LOG_LEVELS[level])


