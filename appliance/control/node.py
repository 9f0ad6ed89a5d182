"""What a node is, kept as state in its database (never in the operator's config file).

Keys of `node_state` (DESIGN.md §7):
  role                'cloud' (a root, after `cloud init`) or 'connected' (after `activate`);
                      absent on a plain development registry
  name                the connected registry's name (connected)
  mode                'ReadWrite' or 'ReadOnly' (connected; a root counts as ReadWrite)
  instance_id         random, made once per data directory
  login_server        HOST:PORT clients and children reach this node at
  admin_token         the token whose credential manages a root (cloud)
  parent_endpoint     HOST:PORT of the parent's gateway (connected)
  parent_protocol     https, or http for a loopback parent (connected)
  parent_fingerprint  sha256:<hex> pinned for the parent's certificate chain, if any
  sync_token          the sync token's name (its password is in secrets/sync-token, 0600)
  settings            the last settings JSON received from the parent
  settings_etag       its ETag, for If-None-Match (refreshed by every sync run)
  changes_cursor      the parent's change-feed position this node has applied (sync)
  connection_state    Online / Offline, as the last sync run found the parent
  last_contact        when the parent last answered
  last_sync_time      when a sync run last completed without errors
  activated_at        when activation succeeded
  last_run            the last sync run's summary (JSON: when, how long, what moved, errors)
  resync_requested    `connected-registry resync` asked for a full reconcile at the next sync
  upstream_run/<url>  when a scheduled `[[upstream]]` last completed a run
  parent_tags/<repo>/<tag>, push_reconcile/<repo>   push sync's bookkeeping (sync/push.py)
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.control.roles import CLOUD, CONNECTED, READ_WRITE  # noqa: F401 - re-exported
from appliance.storage.files import write_file
from appliance.storage.store import Store


@dataclass(frozen=True)
class SyncCredential:
    token: str
    password: str


class NodeState:
    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, key: str) -> str | None:
        return self.store.node.get(key)

    def set(self, key: str, value: str) -> None:
        self.store.node.set(key, value)

    @property
    def role(self) -> str | None:
        return self.store.node.role

    @property
    def mode(self) -> str:
        return self.store.node.mode or READ_WRITE

    def instance_id(self) -> str:
        """Random, made once per data directory: two data directories are two instances."""
        value = self.get("instance_id")
        if value is None:
            value = uuid.uuid4().hex
            self.set("instance_id", value)
        return value

    def settings(self) -> dict[str, Any] | None:
        text = self.get("settings")
        return json.loads(text) if text else None

    # -- the sync token's secret ---------------------------------------------------------------

    @property
    def sync_credential_path(self) -> Path:
        return self.store.layout.sync_credential

    def sync_credential(self) -> SyncCredential | None:
        try:
            data = json.loads(self.sync_credential_path.read_text())
        except FileNotFoundError:
            return None
        return SyncCredential(data["token"], data["password"])

    def write_sync_credential(self, credential: SyncCredential) -> None:
        """0600 from the moment the file exists; replaced atomically and durably."""
        path = self.sync_credential_path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {"token": credential.token, "password": credential.password}
        write_file(path, json.dumps(data).encode())
