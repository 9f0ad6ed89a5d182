"""The one way a moment is written down in storage, and in what the APIs show from it.

UTC, microseconds, `Z`: `2024-05-01T12:00:00.000000Z`. Fixed width, so comparing two stamps as
text (SQL's `<` on the outbox's and change feed's `time`, `ORDER BY created_at`) compares the
moments; `datetime.fromisoformat` reads it back. Rows written before this format was the only
one (`+00:00`, no fraction) still parse; they are never compared as text.
"""

from __future__ import annotations

from datetime import UTC, datetime

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> datetime:
    """The real clock: the default of every `clock=` seam, which a test replaces to move time."""
    return datetime.now(UTC)


def timestamp(moment: datetime | None = None) -> str:
    """`moment` (now if None; a naive one is taken as UTC) in the storage format."""
    moment = moment or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(FORMAT)
