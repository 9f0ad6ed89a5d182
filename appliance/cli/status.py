"""`connected-registry status`: what this node is and holds, from its data directory alone.

Never touches the network: the role, name, mode and parent come from the node state; the
connection state is what the node last recorded (the sync keeps `connection_state`,
`last_sync_time` and `last_contact` in the node state; before the first sync it is Unknown);
storage figures are the database's and the file system's. On a root it also lists the connected
registries below it, with the state their instances last reported.

Sync: the run under way, live, when the running service answers on `control.sock` (the one
thing `status` asks anyone, and only on this machine), else the last run's summary (when, how
long, what moved, its errors), which every run that is not dry leaves in the node state.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import click

from appliance.auth.tokens import Credentials
from appliance.cli.options import existing_registry, load, node_options, open_store
from appliance.cli.output import emit, format_fields, format_table, human_size, output_option
from appliance.cli.sync import progress_line
from appliance.control.hierarchy import Hierarchy, offline_after_from
from appliance.control.roles import CLOUD, CONNECTED, READ_WRITE
from appliance.storage.store import Store
from appliance.storage.uploads import ABANDONED_AFTER
from appliance.sync.service_client import live_status

DEVELOPMENT = "development"


def node_status(store: Store, offline_after: str | None = None) -> dict[str, Any]:
    """The status document `--output json` prints."""
    node = store.node
    role = node.role or DEVELOPMENT
    holdings = store.holdings()
    uploads = store.uploads.tally()
    status: dict[str, Any] = {
        "role": role,
        "name": node.name,
        "mode": node.mode or READ_WRITE,
        "loginServer": node.login_server,
        "instanceId": node.instance_id,
        "dataDir": str(store.layout.root),
        "parent": None,
        "activationStatus": None,
        "storage": {
            "blobs": holdings.blobs,
            "blobBytes": holdings.blob_bytes,
            "freeBytes": shutil.disk_usage(store.layout.root).free,
            # Pushes under way and partial downloads; abandoned ones are purged by the service.
            "uploads": {
                "sessions": uploads.sessions,
                "bytes": uploads.bytes,
                "abandoned": uploads.abandoned,
                "abandonedBytes": uploads.abandoned_bytes,
                "abandonedAfterSeconds": int(ABANDONED_AFTER),
            },
        },
        "repositories": holdings.repositories,
        "tags": holdings.tags,
        # `running` and `warnings` (what the service runs without: auth, TLS) are filled in
        # from the service, when one answers.
        "sync": {"running": None, "lastRun": node.last_run},
        "warnings": [],
    }
    if role == CONNECTED:
        status["parent"] = {
            "endpoint": node.parent_endpoint,
            "protocol": node.parent_protocol,
            "fingerprint": node.parent_fingerprint,
        }
        status["activationStatus"] = "Active"
        status["activatedAt"] = node.activated_at
        status["connectionState"] = node.connection_state or "Unknown"
        status["lastSyncTime"] = node.last_sync_time
        status["lastContact"] = node.last_contact
    if role == CLOUD:
        hierarchy = Hierarchy(
            store, Credentials(store.db), offline_after=offline_after_from(offline_after)
        )
        status["connectedRegistries"] = [
            {
                "name": entry["name"],
                "mode": entry["mode"],
                "parent": entry["parent"],
                "activationStatus": entry["activationStatus"],
                "connectionState": entry["connectionState"],
                "lastActivityTime": entry["lastActivityTime"],
            }
            for entry in (hierarchy.to_json(cr) for cr in hierarchy.list())
        ]
    return status


def _table(status: dict[str, Any]) -> str:
    role = status["role"]
    # People read "root" (the README, the hints); the JSON keeps the role's name, "cloud".
    fields = [("Role", "root" if role == CLOUD else role)]
    if role == CONNECTED:
        parent = status["parent"]
        fields += [
            ("Name", status["name"]),
            ("Mode", status["mode"]),
            ("Parent", f"{parent['protocol']}://{parent['endpoint']}"),
            ("Activation", f"{status['activationStatus']} since {status['activatedAt']}"),
            ("Connection", _connection(status)),
        ]
    elif role == CLOUD:
        fields.append(("Mode", READ_WRITE))
    if status["loginServer"]:
        fields.append(("Login server", status["loginServer"]))
    storage = status["storage"]
    fields += [
        ("Data", status["dataDir"]),
        ("Blobs", f"{storage['blobs']} ({human_size(storage['blobBytes'])})"),
        ("Uploads", _uploads(storage["uploads"])),
        ("Free space", human_size(storage["freeBytes"])),
        ("Repositories", str(status["repositories"])),
        ("Tags", str(status["tags"])),
    ]
    sync = _sync(status["sync"])
    if sync:
        fields.append(("Sync", sync))
    fields += [("Warning", warning) for warning in status["warnings"]]
    text = format_fields(fields)
    if role == CLOUD:
        rows = [
            (
                cr["name"],
                cr["mode"],
                cr["activationStatus"],
                cr["connectionState"],
                cr["parent"] or "(root)",
                cr["lastActivityTime"] or "never",
            )
            for cr in status["connectedRegistries"]
        ]
        text += "\n\nConnected registries:\n" + (
            format_table(("name", "mode", "activation", "state", "parent", "last activity"), rows)
            if rows
            else "  none yet (connected-registry cloud create NAME …)"
        )
    return text


def _sync(sync: dict[str, Any]) -> str | None:
    running, last = sync["running"], sync["lastRun"]
    if running is not None:
        return f"running (run {running['runId'][:8]}), {progress_line(running)}"
    if last is None:
        return None
    line = (
        f"last run {last['finishedAt']}, {last['seconds']:.1f} s: {last['manifests']} manifests, "
        f"{last['blobs']} blobs, {human_size(last['bytes'])}, {last['errors']} error(s)"
    )
    return line + (f"; first: {last['firstError']}" if last["firstError"] else "")


def _uploads(uploads: dict[str, Any]) -> str:
    line = f"{uploads['sessions']} session(s) ({human_size(uploads['bytes'])})"
    if uploads["abandoned"]:
        hours = uploads["abandonedAfterSeconds"] / 3600
        line += (
            f", {uploads['abandoned']} idle for over {hours:g} h "
            f"({human_size(uploads['abandonedBytes'])}), which the service purges"
        )
    return line


def _connection(status: dict[str, Any]) -> str:
    state = status["connectionState"]
    if status["lastSyncTime"]:
        state += f", last sync {status['lastSyncTime']}"
    return state


@click.command()
@node_options
@output_option
def status(config_path: Path | None, data_dir: Path | None, output: str) -> None:
    """What this node is (development, root or connected registry) and what it holds.

    Works offline: everything comes from the data directory, except the progress of a sync
    under way, which the running service tells over its local control socket.
    """
    config = load(config_path, data_dir)
    layout = existing_registry(config)
    store = open_store(config)
    try:
        document = node_status(store, config.offline_after)
    finally:
        store.close()
    live = asyncio.run(live_status(layout.control_socket))
    if live is not None:
        document["sync"]["running"] = live.get("running")
        document["warnings"] = live.get("warnings") or []
    emit(output, document, lambda: _table(document))
