"""The on-disk layout of a data directory, described once. No other module builds a path.

    <data_dir>/
      registry.db                  SQLite (WAL): repositories, links, manifests, tags, uploads,
                                   outbox, change feed, node state
      blobs/sha256/<ab>/<abcd…>    content-addressed blob files, named by their full hex digest
      uploads/<session id>         the bytes received so far for one upload session
      sync.lock                    flock held by the one running sync
      serve.lock                   flock held by the one running `serve`; holds its PID
      control.sock                 0600: the running service's local control socket (`sync`,
                                   `status` on this machine; registry/control_socket.py)
      tls/                         public half of `tls generate`, 0644 each
        ca.crt                     the CA clients trust (its fingerprint goes in connection strings)
        server.crt                 the serving certificate, signed by that CA
        parent-ca.crt              on a connected registry: the CA its parent's chain is checked
                                   against (pinned at activation, or copied from --ca-file)
      secrets/                     0700
        token-signing-key.pem      0600: signs the bearer tokens of /oauth2/token
        tls-ca.key                 0600: signs server.crt (kept so a re-issue keeps the same CA)
        tls-server.key             0600: server.crt's private key
        sync-token                 0600: on a connected registry, its sync token's name and
                                   password (JSON), written at activation

Paths are built only from a validated `Digest` or from a session id this process generated, so
nothing a client sends can name a file outside the data directory.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from appliance.oci.digests import Digest

_SESSION_ID = re.compile(r"[a-f0-9]{32}")


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.database = root / "registry.db"
        self.blobs = root / "blobs" / "sha256"
        self.uploads = root / "uploads"
        self.secrets = root / "secrets"
        self.token_signing_key = self.secrets / "token-signing-key.pem"
        self.sync_lock = root / "sync.lock"
        self.serve_lock = root / "serve.lock"
        self.control_socket = root / "control.sock"
        self.tls = root / "tls"
        self.tls_ca_cert = self.tls / "ca.crt"
        self.tls_server_cert = self.tls / "server.crt"
        self.parent_ca_cert = self.tls / "parent-ca.crt"
        self.tls_ca_key = self.secrets / "tls-ca.key"
        self.tls_server_key = self.secrets / "tls-server.key"
        self.sync_credential = self.secrets / "sync-token"

    def create(self) -> None:
        for folder in (self.root, self.blobs, self.uploads):
            folder.mkdir(parents=True, exist_ok=True)
        self.secrets.mkdir(mode=0o700, exist_ok=True)

    def blob(self, digest: Digest) -> Path:
        return self.blobs / digest.hex[:2] / digest.hex

    def upload(self, session_id: str) -> Path:
        if not is_session_id(session_id):
            raise ValueError(f"not a session id: {session_id!r}")
        return self.uploads / session_id


def is_session_id(value: str) -> bool:
    return _SESSION_ID.fullmatch(value) is not None


def existing_state(layout: Layout) -> dict[str, str]:
    """The node state already in the data directory, read without changing it: {} if there is
    no database (or it cannot be read, which opening the store later will report)."""
    if not layout.database.exists():
        return {}
    # Read-only on a WAL database still creates -wal and -shm files unless it is opened
    # immutable; that is safe only when no -wal holds writes the main file lacks.
    wal = layout.database.with_name(layout.database.name + "-wal")
    mode = "mode=ro" if wal.exists() else "immutable=1"
    try:
        conn = sqlite3.connect(f"{layout.database.resolve().as_uri()}?{mode}", uri=True)
        try:
            return dict(conn.execute("SELECT key, value FROM node_state"))
        finally:
            conn.close()
    except sqlite3.Error:
        return {}
