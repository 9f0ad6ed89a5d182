"""`Outbox`: the writes a node with a parent still has to replay upward (push sync).

A row is added in the same transaction as the write it records (`Store._record`) and removed
once the parent has it, or dropped when older than the message TTL.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A write to replay to the parent: `op` is 'put' or 'delete'; `tag` None for the
    manifest itself."""

    seq: int
    repository: str
    op: str
    tag: str | None
    digest: str
    time: str


class Outbox:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def append(self, repository: str, op: str, tag: str | None, digest: str, time: str) -> None:
        self._conn.execute(
            "INSERT INTO outbox (repository, op, tag, digest, time) VALUES (?, ?, ?, ?, ?)",
            (repository, op, tag, digest, time),
        )

    def rows(self, after: int, limit: int) -> list[OutboxRow]:
        """Up to `limit` rows after sequence number `after`, oldest first."""
        return [
            OutboxRow(*row)
            for row in self._conn.execute(
                "SELECT seq, repository, op, tag, digest, time FROM outbox "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            )
        ]

    def remove(self, seq: int) -> None:
        """A row that was applied upward (or dropped): it is never replayed again."""
        self._conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def holds(self, repository: str, digest: str) -> bool:
        """Whether a write of this manifest (or a tag on it) still waits to go up."""
        return (
            self._conn.execute(
                "SELECT 1 FROM outbox WHERE repository = ? AND digest = ? LIMIT 1",
                (repository, digest),
            ).fetchone()
            is not None
        )

    def pending(self) -> int:
        """How many rows wait."""
        return int(self._conn.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def drop_older_than(self, cutoff: str) -> list[str]:
        """Remove the rows written before `cutoff` (a storage timestamp); the repository of
        each removed row, one per row."""
        return [
            row[0]
            for row in self._conn.execute(
                "DELETE FROM outbox WHERE time < ? RETURNING repository", (cutoff,)
            )
        ]
