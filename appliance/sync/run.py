"""One sync run: the config's `[[upstream]]`s, then this node's parent, each pulled.

The upstreams of a node:
- its parent, on an activated connected registry: `parent_protocol://parent_endpoint` with the
  sync token (Bearer through the parent's token endpoint), trusting `tls/parent-ca.crt` when
  activation pinned one, else the system store; the conversation with it (settings, window,
  push, change feed, pull, status) is parent.py's;
- every `[[upstream]]` of the config, on any node (a root, a device, a development registry),
  always by full reconcile (pull.py). One with a `schedule` (cron, UTC) is pulled only by the
  first run after each occurrence (`upstream_run/<url>` in node_state records its last complete
  run); the others are pulled by every run. They are not under the parent's window.

A run goes on in whichever process calls `run_sync`, under the sync lock (lock.py): the running
service when `connected-registry sync` reaches it over `control.sock`
(registry/control_socket.py), else the command itself. Its `Progress` (progress.py) is live
under its run id, which the report (report.py) and every log line carry; the last run that was
not dry is summed up in the node state (`last_run`), and `last_sync_time` is set by a run that
completed without errors; with `connection_state`, `last_contact` and `changes_cursor`
(parent.py) they are what `connected-registry status` shows.

Every client a run makes (pull and push, parent and plain upstreams) shares the process's one
token bucket for `[sync] bandwidth_limit` (bandwidth.py), so the limit holds for all transfers
together.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from appliance.config import Config
from appliance.control.node import CONNECTED, NodeState
from appliance.storage.store import Store
from appliance.sync.parent import sync_with_parent
from appliance.sync.progress import Progress, tracking
from appliance.sync.pull import pull
from appliance.sync.report import STAMP, SourceReport, SyncReport, stamp
from appliance.sync.schedule import NO_DEADLINE, Clock, last_occurrence, next_occurrence, utc_now
from appliance.sync.sources import Source, upstream_sources
from appliance.system.logs import run_context

# node_state key: the last run that was not dry, summed up (Progress.summary) for `status`.
LAST_RUN = "last_run"
# node_state key prefix: when a scheduled `[[upstream]]` (by URL) last completed a run.
UPSTREAM_RUN = "upstream_run/"


async def run_sync(
    store: Store,
    config: Config,
    dry_run: bool = False,
    clock: Clock = utc_now,
    progress: Progress | None = None,
) -> SyncReport:
    """Sync every upstream; failures are in the report (`errors`), never raised, so one
    unreachable upstream does not stop the others (SyncError only for a run that cannot start:
    a bad `[[upstream]]`, a damaged node state). `clock` is UTC wall time, injected so the
    window and its deadline can be tested. `progress` (a new one when None) follows the run
    live; its run id is the report's and every log line's. A run that is not dry is summed up
    in the node state (`last_run`) for `connected-registry status`. The caller holds the lock."""
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
        pulled = await _pull_upstream(store, source, node.mode, dry_run)
        if not dry_run and not pulled.errors:
            store.node.set(UPSTREAM_RUN + source.url, now.strftime(STAMP))
        report.sources.append(pulled)
    if node.role == CONNECTED:
        parent = await sync_with_parent(store, config, node, report, dry_run, clock)
        report.sources.insert(0, parent)
    report.seconds = time.monotonic() - started
    # A last sync is one that completed: not one that failed, stopped, or did not run.
    in_window = report.window is None or report.window.open
    if not dry_run and not report.errors and not report.stopped_by_window and in_window:
        node.set("last_sync_time", stamp(utc_now()))
    return report


def _due(store: Store, source: Source, now: datetime) -> bool:
    """An upstream with a schedule runs when an occurrence has passed since its last complete
    run (or it never completed one); one without runs every time."""
    if source.schedule is None:
        return True
    last = store.node.get(UPSTREAM_RUN + source.url)
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


async def _pull_upstream(store: Store, source: Source, mode: str, dry_run: bool) -> SourceReport:
    """A plain upstream: every repository in its scope, no deadline."""
    client = source.client()
    report = await pull(store, source, client, mode, dry_run, NO_DEADLINE, None)
    report.requests = client.requests
    return report


