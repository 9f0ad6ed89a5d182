"""`connected-registry sync`: copy what changed from this node's upstreams, once, now.

When the service runs, the command asks it over `<data_dir>/control.sock` and follows the run
(sync/service_client.py), so one process owns the store and the progress; with no service
answering it runs in-process on the data directory (SQLite WAL, one write path). Either way the same
`run_sync` runs under the same lock, and the output and exit code are the same; `--output
json` says which (`"via": "service"` or `"process"`).

While it runs, its progress goes to stderr: a live line on a terminal; otherwise (the timer's
runs, in the journal), once a run has gone on for PROGRESS_EVERY seconds, a line every
PROGRESS_EVERY seconds and one per repository started. A shorter run, the usual idle one, adds
nothing to its table, and a failure stays one line.

A run that finds another one under way says so and exits 0: the timer fires every minute and a
long transfer may still be going, which is not a failure. Through the service a request joins a
run of the same kind already under way (registry/control_socket.py) and ends with its report.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import click

from appliance.cli.options import existing_registry, load, node_options, open_store
from appliance.cli.output import emit, format_fields, human_size, output_option
from appliance.config import Config
from appliance.storage.layout import Layout
from appliance.sync.lock import AlreadyRunning, sync_lock
from appliance.sync.progress import Progress
from appliance.sync.run import run_sync
from appliance.sync.service_client import ControlError, ServiceUnavailable, follow_sync
from appliance.sync.sources import SyncError
from appliance.system import logs
from appliance.system.role import node_role, nothing_to_sync

# Not on a terminal: a progress line this often (and one per repository), once a run is longer.
PROGRESS_EVERY = 10.0
# On a terminal: redraws at most this often.
REDRAW_EVERY = 0.2


def progress_line(progress: dict[str, Any]) -> str:
    """A run's progress (Progress.to_json()) in one line: where it is, what moved, how fast."""
    done, total = progress["repositoriesDone"], progress["repositoriesTotal"]
    where = progress["phase"]
    if progress["repository"]:
        where += f" {progress['repository']}"
    blobs = f"{progress['blobs']} blobs"
    if progress["blobsUnderWay"]:
        under_way = human_size(progress["bytesUnderWay"])
        blobs += f" ({progress['blobsUnderWay']} under way, {under_way})"
    parts = [
        f"{done}/{total} repositories" if total is not None else f"{done} repositories",
        blobs,
        human_size(progress["bytes"]),
        f"{human_size(progress['bytesPerSecond'])}/s",
    ]
    return f"{where}: {', '.join(parts)}"


class ProgressDisplay:
    """A run's progress on `stream`: one line redrawn in place on a terminal; else, from
    PROGRESS_EVERY seconds into the run on, a log line every PROGRESS_EVERY seconds and one when
    a repository starts."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._began = self._shown = time.monotonic()
        self._drawn = False

    def show(self, kind: str, progress: Callable[[], dict[str, Any]]) -> None:
        """A change of `kind` (see progress.py); `progress()` gives the figures, asked for only
        when they are shown (this is called for every chunk received)."""
        now = time.monotonic()
        if self.live:
            if now - self._shown >= REDRAW_EVERY or kind == "finished":
                self._draw(progress_line(progress()))
                self._shown = now
        elif now - self._began >= PROGRESS_EVERY and (
            kind == "repository" or now - self._shown >= PROGRESS_EVERY
        ):
            figures = progress()
            self.note(f"sync {figures['runId'][:8]}: {progress_line(figures)}")
            self._shown = now

    def note(self, text: str) -> None:
        """A line of its own (kept on a terminal, above the live line)."""
        self.clear()
        print(text, file=self.stream, flush=True)

    def clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def _draw(self, text: str) -> None:
        # One line that never wraps, or \r could not take the cursor back to its start.
        width = shutil.get_terminal_size().columns - 1
        self.stream.write("\r\x1b[K" + ("sync: " + text)[:width])
        self.stream.flush()
        self._drawn = True


def _table(report: dict[str, Any], in_window: bool = False) -> str:
    window = report["window"]
    if window is not None and not window["open"] and not in_window:
        return _closed(report)
    total = report["total"]
    verb = "Would move" if report["dryRun"] else "Moved"
    seconds = report["seconds"]
    rate = total["bytes"] / seconds if seconds > 0 else 0.0
    lines = [
        format_fields(
            [
                ("Upstreams", ", ".join(s["source"] for s in report["sources"]) or "none"),
                ("Repositories", f"{total['repositories']} changed"),
                (
                    verb,
                    f"{total['manifests']} manifests, {total['blobs']} blobs, "
                    f"{human_size(total['bytes'])}",
                ),
                ("Tags", f"{total['tagsMoved']} moved, {total['tagsDeleted']} deleted"),
                ("Requests", str(report["requests"])),
                ("Time", f"{seconds:.2f} s ({human_size(int(rate))}/s)"),
            ]
        )
    ]
    if window is not None and window["closesAt"] is not None:
        lines.append(f"The sync window closes at {_stamp(window['closesAt'])}.")
    for source in report["sources"]:
        lines += [f"warning: {source['source']}: {w}" for w in source["warnings"]]
        lines += [f"kept (changed on this node): {t}" for t in source["tagsKeptLocal"]]
    return "\n".join(lines)


def _stamp(moment: str | None) -> str:
    """A report's UTC timestamp (`2024-05-01T10:00:00Z`) for people."""
    if not moment:
        return "never"
    parsed = datetime.strptime(moment, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return parsed.strftime("%Y-%m-%d %H:%M UTC")


def _closed(report: dict[str, Any]) -> str:
    """Outside the window: nothing moved from the parent, and when it will."""
    line = (
        "Outside the sync window: nothing moves from the parent now. "
        f"The next window opens at {_stamp(report['window']['opensAt'])}."
    )
    if all(source["feed"] == "closed" for source in report["sources"]):
        return line
    return line + "\n" + _table(report, in_window=True)


def _errors(report: dict[str, Any]) -> list[str]:
    return [error for source in report["sources"] for error in source["errors"]]


def _through_service(layout: Layout, dry_run: bool, display: ProgressDisplay) -> dict[str, Any]:
    """The run the service does (or was doing: a request joins one under way)."""

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "started" and event["joined"]:
            display.note(f"sync {event['runId'][:8]}: joined the run under way in the service")
        display.show(event["event"], lambda: event["progress"])

    return asyncio.run(follow_sync(layout.control_socket, dry_run, on_event))


def _in_process(config: Config, dry_run: bool, display: ProgressDisplay) -> dict[str, Any]:
    # Asked only here: a service that answers has something to sync (it listens only then),
    # perhaps from the [[upstream]]s of a config this command was not given.
    data_dir = config.data_dir.resolve()
    refusal = nothing_to_sync(node_role(data_dir).role, data_dir, bool(config.upstreams))
    if refusal is not None:
        raise click.ClickException(refusal)
    store = open_store(config, create=bool(config.upstreams))
    try:
        with sync_lock(store.layout.sync_lock):
            progress = Progress(dry_run)
            progress.listen(lambda kind: display.show(kind, progress.to_json))
            return asyncio.run(run_sync(store, config, dry_run, progress=progress)).to_json()
    finally:
        store.close()


@click.command()
@node_options
@click.option("--dry-run", is_flag=True, help="Print what would move; write nothing.")
@output_option
def sync(config_path: Path | None, data_dir: Path | None, dry_run: bool, output: str) -> None:
    """Copy what changed from the parent and the config's [[upstream]] registries, now.

    With the service running, it does the run and this command follows it (showing progress:
    live on a terminal, otherwise a line every 10 s of a longer run); with no service it runs
    here. A request while the service's run of the same kind is under way follows that run.

    The parent's settings are fetched first (tokens, repositories, schedule, window, TTL and
    log level take effect in this run); outside the parent's sync window nothing moves from it
    and the command says when the next window opens. A run that reaches the end of its window
    stops between blobs and repositories, keeping what was copied. Status goes to the parent
    at the end.

    Exits 0 when everything in scope is in sync (or another sync is already running, or it is
    outside the window, or the window closed during the run), 1 with the first error otherwise
    (or when the service stopped during the run, or the node has nothing to sync from: it is
    not an activated connected registry and its config has no [[upstream]]).
    """
    config = load(config_path, data_dir)
    # Under the timer the journal gets the run's lines with their fields; on a terminal or in
    # a script the report below says it all, and only a crash's traceback-level error shows.
    logs.configure(config.log_level, terminal_level="critical")
    layout = Layout(config.data_dir.resolve())
    # A plain node's first sync from its [[upstream]]s makes its registry (no other command
    # sets one up); anywhere else a sync needs a registry.
    if not config.upstreams:
        existing_registry(config)
    display = ProgressDisplay(sys.stderr)
    try:
        try:
            report, via = _through_service(layout, dry_run, display), "service"
        except ServiceUnavailable:
            report, via = _in_process(config, dry_run, display), "process"
    except AlreadyRunning:
        display.clear()
        click.echo("a sync is already running; this one does nothing")
        return
    except (SyncError, ControlError) as err:
        raise click.ClickException(str(err)) from None
    finally:
        display.clear()
    report["via"] = via
    emit(output, report, lambda: _table(report))
    errors = _errors(report)
    if errors:
        extra = len(errors) - 1
        more = f" (and {extra} more error(s))" if extra else ""
        raise click.ClickException(f"{errors[0]}{more}")
