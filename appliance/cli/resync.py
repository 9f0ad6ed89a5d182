"""`connected-registry resync`: a full reconcile with the parent at the next sync."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.options import load, node_options, open_store
from appliance.cli.output import emit, output_option
from appliance.storage.layout import Layout
from appliance.sync.resync import NotConnected, request_resync


@click.command()
@node_options
@output_option
def resync(config_path: Path | None, data_dir: Path | None, output: str) -> None:
    """Reconcile this device fully with its parent at the next sync.

    The next sync (the timer's, within a minute, or `connected-registry sync` now) ignores the
    change feed and compares every repository in scope with the parent; on a ReadWrite device
    it also compares this device's own content with the parent and pushes what differs.
    Nothing moves now. On the root, `connected-registry cloud resync NAME` asks a device.
    """
    config = load(config_path, data_dir)
    if not Layout(config.data_dir).database.exists():
        raise click.ClickException(
            f"NOT_ACTIVATED: {config.data_dir} is not an activated connected registry"
        )
    store = open_store(config)
    try:
        marked = request_resync(store)
    except NotConnected:
        raise click.ClickException(
            f"NOT_ACTIVATED: {config.data_dir} is not an activated connected registry "
            "(on a root, `connected-registry cloud resync NAME` asks one of its devices)"
        ) from None
    finally:
        store.close()
    upward = ""
    if marked.push:
        upward = f", and {len(marked.push)} repositories with this device's own content upward"
    emit(
        output,
        {"resyncRequested": True, "pushReconcile": marked.push},
        lambda: (
            f"The next sync reconciles everything in scope with the parent{upward}. "
            "`connected-registry sync` runs it now."
        ),
    )
