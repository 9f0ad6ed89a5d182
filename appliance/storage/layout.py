"""The on-disk layout of a data directory, described once. No other module builds a path.

    <data_dir>/
      registry.db                  SQLite (WAL): repositories, links, manifests, tags, uploads,
                                   outbox, change feed, node state
      blobs/sha256/<ab>/<abcd…>    content-addressed blob files, named by their full hex digest
      uploads/<session id>         the bytes received so far for one upload session
      secrets/                     0700
        token-signing-key.pem      0600: signs the bearer tokens of /oauth2/token

Paths are built only from a validated `Digest` or from a session id this process generated, so
nothing a client sends can name a file outside the data directory.
"""

from __future__ import annotations

import re
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
