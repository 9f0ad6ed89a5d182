"""The change feed's rows (PROTOCOL.md §3): the `changes` table, which the store writes for
every content change. Sequence numbers are SQLite rowids; the newest row is never pruned, so
they never restart."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Change:
    seq: int
    repository: str
    op: str
    tag: str | None
    digest: str | None
    time: str

    def to_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "repository": self.repository,
            "op": self.op,
            "tag": self.tag,
            "digest": self.digest,
            "time": self.time,
        }


class ChangeFeed:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def bounds(self) -> tuple[int | None, int | None]:
        """The oldest and newest sequence numbers kept (None, None for an empty feed)."""
        oldest, newest = self.conn.execute("SELECT min(seq), max(seq) FROM changes").fetchone()
        return oldest, newest

    def after(self, cursor: int, until: int, limit: int) -> Iterator[Change]:
        """The rows after `cursor` up to `until`, in order, at most `limit`."""
        rows = self.conn.execute(
            "SELECT seq, repository, op, tag, digest, time FROM changes WHERE seq > ? AND seq <= ? "
            "ORDER BY seq LIMIT ?",
            (cursor, until, limit),
        )
        for row in rows:
            yield Change(*row)

    def prune(self, before: datetime) -> int:
        """Drop rows written before `before`, except the newest; how many went."""
        cutoff = before.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        deleted = self.conn.execute(
            "DELETE FROM changes WHERE time < ? AND seq < (SELECT max(seq) FROM changes)", (cutoff,)
        )
        return deleted.rowcount
