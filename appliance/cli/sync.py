"""`connected-registry sync`: copy what changed from this node's upstreams, once, now.

Runs in-process on the data directory (the service shares it: SQLite WAL, one write path).
Asking a running service to sync over `control.sock` instead is a later step. A run that finds
another one under way says so and exits 0: the timer fires every minute and a long transfer
may still be going, which is not a failure.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import click

from appliance.cli.options import load, node_options, open_store
from appliance.cli.output import emit, format_fields, human_size, output_option
from appliance.sync.run import AlreadyRunning, SyncError, SyncReport, run_sync, sync_lock


def _table(report: SyncReport, in_window: bool = False) -> str:
    window = report.window
    if window is not None and not window.open and not in_window:
        return _closed(report)
    total = report.total
    verb = "Would move" if report.dry_run else "Moved"
    rate = total.bytes / report.seconds if report.seconds > 0 else 0.0
    lines = [
        format_fields(
            [
                ("Upstreams", ", ".join(r.source for r in report.sources) or "none"),
                ("Repositories", f"{total.repositories} changed"),
                (
                    verb,
                    f"{total.manifests} manifests, {total.blobs} blobs, {human_size(total.bytes)}",
                ),
                ("Tags", f"{total.tags_moved} moved, {total.tags_deleted} deleted"),
                ("Requests", str(report.requests)),
                ("Time", f"{report.seconds:.2f} s ({human_size(int(rate))}/s)"),
            ]
        )
    ]
    if window is not None and window.closes_at is not None:
        lines.append(f"The sync window closes at {_stamp(window.closes_at)}.")
    for source in report.sources:
        lines += [f"warning: {source.source}: {w}" for w in source.warnings]
        lines += [f"kept (changed on this node): {t}" for t in source.transfer.tags_kept]
    return "\n".join(lines)


def _stamp(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "never"


def _closed(report: SyncReport) -> str:
    """Outside the window: nothing moved from the parent, and when it will."""
    assert report.window is not None
    line = (
        "Outside the sync window: nothing moves from the parent now. "
        f"The next window opens at {_stamp(report.window.opens_at)}."
    )
    if all(source.feed == "closed" for source in report.sources):
        return line
    return line + "\n" + _table(report, in_window=True)


@click.command()
@node_options
@click.option("--dry-run", is_flag=True, help="Print what would move; write nothing.")
@output_option
def sync(config_path: Path | None, data_dir: Path | None, dry_run: bool, output: str) -> None:
    """Copy what changed from the parent and the config's [[upstream]] registries, now.

    The parent's settings are fetched first (tokens, repositories, schedule, window, TTL and
    log level take effect in this run); outside the parent's sync window nothing moves from it
    and the command says when the next window opens. A run that reaches the end of its window
    stops between blobs and repositories, keeping what was copied. Status goes to the parent
    at the end.

    Exits 0 when everything in scope is in sync (or another sync is already running, or it is
    outside the window, or the window closed during the run), 1 with the first error otherwise.
    """
    config = load(config_path, data_dir)
    store = open_store(config)
    try:
        with sync_lock(store.layout.sync_lock):
            report = asyncio.run(run_sync(store, config, dry_run))
    except AlreadyRunning:
        click.echo("a sync is already running; this one does nothing")
        return
    except SyncError as err:
        raise click.ClickException(str(err)) from None
    finally:
        store.close()
    emit(output, report.to_json(), lambda: _table(report))
    if report.errors:
        extra = len(report.errors) - 1
        more = f" (and {extra} more error(s))" if extra else ""
        raise click.ClickException(f"{report.errors[0]}{more}")
