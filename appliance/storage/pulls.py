"""`Pulls`: when each manifest and blob was last pulled, recorded without a write on the GET path.

A GET notes the moment in memory (a dict assignment); `flush()` writes what was noted in one
transaction, called every few seconds by the service and at shutdown. A crash loses at most the
notes since the last flush — "last pulled" is a hint for retention, eviction and the status
page, never a promise, so that is the right trade for keeping reads free of writes.
"""

from __future__ import annotations

import sqlite_utils

from appliance.storage.schema import write_transaction
from appliance.storage.timestamps import timestamp

FLUSH_EVERY = 5.0  # seconds between the service's flushes


class Pulls:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self._db = db
        self._conn = db.conn
        self._manifests: dict[tuple[str, str], str] = {}
        self._blobs: dict[str, str] = {}

    def note_manifest(self, repository: str, digest: str, now: str | None = None) -> None:
        """A client pulled this manifest (by tag or digest): remembered until the next flush."""
        self._manifests[(repository, digest)] = now or timestamp()

    def note_blob(self, digest: str, now: str | None = None) -> None:
        """A client pulled this blob's bytes (a GET, not a HEAD)."""
        self._blobs[digest] = now or timestamp()

    def flush(self) -> int:
        """Write every note taken since the last flush, in one transaction; how many."""
        manifests, self._manifests = self._manifests, {}
        blobs, self._blobs = self._blobs, {}
        if not manifests and not blobs:
            return 0
        with write_transaction(self._db):
            self._conn.executemany(
                "INSERT INTO manifest_pulls (repository, digest, last_pulled) VALUES (?, ?, ?) "
                "ON CONFLICT (repository, digest) DO UPDATE SET last_pulled = "
                "max(last_pulled, excluded.last_pulled)",
                [(r, d, at) for (r, d), at in manifests.items()],
            )
            self._conn.executemany(
                "INSERT INTO blob_pulls (digest, last_pulled) VALUES (?, ?) "
                "ON CONFLICT (digest) DO UPDATE SET last_pulled = "
                "max(last_pulled, excluded.last_pulled)",
                list(blobs.items()),
            )
        return len(manifests) + len(blobs)

    def manifest_last_pulled(self, repository: str, digest: str) -> str | None:
        """When a client last pulled this manifest (notes not yet flushed included)."""
        noted = self._manifests.get((repository, digest))
        if noted is not None:
            return noted
        row = self._conn.execute(
            "SELECT last_pulled FROM manifest_pulls WHERE repository = ? AND digest = ?",
            (repository, digest),
        ).fetchone()
        return row[0] if row else None

    def blob_last_pulled(self, digest: str) -> str | None:
        """When a client last pulled this blob (notes not yet flushed included)."""
        noted = self._blobs.get(digest)
        if noted is not None:
            return noted
        row = self._conn.execute(
            "SELECT last_pulled FROM blob_pulls WHERE digest = ?", (digest,)
        ).fetchone()
        return row[0] if row else None
